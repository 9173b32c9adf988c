#!/bin/bash
# packaging/build.sh — build kechi's .deb and .rpm from a checkout.
#
#   packaging/build.sh [--deb-only | --rpm-only] [--check]
#
# 1. cargo build --release --locked (kechid, kechictl)
# 2. gzipped man pages in TARGET/release/man/ (for the rpm; cargo-deb compresses its own)
# 3. cargo-deb and cargo-generate-rpm, installed with `cargo install --locked` when missing
#    (compiled from source: several minutes the first time, then found in ~/.cargo/bin)
# 4. cargo deb --no-build, cargo generate-rpm, into TARGET/packages/
# 5. the paths of the packages, one a line, on stdout (progress goes to stderr)
#
# --check also runs lintian on the .deb and `rpm -qlp`, `rpm -qp --scripts` on the .rpm when
# those tools are there (apt-get install lintian rpm).
#
# Environment: CARGO_TARGET_DIR (default ./target), PKG_MAINTAINER ("Name <address>") to put
# another maintainer in the .deb, CARGO_DEB_VERSION / CARGO_GENERATE_RPM_VERSION for the tool
# versions installed when missing.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-3.8.0}
CARGO_GENERATE_RPM_VERSION=${CARGO_GENERATE_RPM_VERSION:-0.21.1}

deb=1 rpm=1 check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --deb-only) rpm=0 ;;
    --rpm-only) deb=0 ;;
    --check) check=1 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# cargo where rustup put it, also under sudo (whose secure_path drops ~/.cargo/bin)
# shellcheck source=scripts/lib/cargo.sh
. scripts/lib/cargo.sh
use_cargo || die "cargo not found (install Rust: rustup)"
target=${CARGO_TARGET_DIR:-$PWD/target}
case "$target" in /*) ;; *) target=$PWD/$target ;; esac
export CARGO_TARGET_DIR=$target
out=$target/packages

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || die "no version in Cargo.toml"
for page in man/kechid.8 man/kechictl.1 man/kechi.toml.5; do
  grep -q "^\.TH .*\"kechi $version\"" "$page" ||
    say "warning: $page does not say kechi $version in its .TH line"
done
for f in units/kechi@.service units/kechi@.socket units/kechi.slice; do
  [ -f "$f" ] || die "$f is missing: the packages install it"
done

# the tools, when missing
need_tool() {  # need_tool CRATE VERSION
  local crate=$1 version=$2
  if cargo "${crate#cargo-}" --version > /dev/null 2>&1; then return 0; fi
  say "installing $crate $version (cargo install --locked; this takes a few minutes once)"
  cargo install --locked "$crate" --version "$version" >&2 ||
    die "cargo install $crate failed"
}
[ "$deb" = 0 ] || need_tool cargo-deb "$CARGO_DEB_VERSION"
[ "$rpm" = 0 ] || need_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

say "building release binaries in $target/release"
cargo build --release --locked --bins >&2

say "compressing man pages"
mkdir -p "$target/release/man"
for page in man/kechid.8 man/kechictl.1 man/kechi.toml.5; do
  gzip -9 -n -c "$page" > "$target/release/man/${page#man/}.gz"
done

mkdir -p "$out"
paths=()
if [ "$deb" = 1 ]; then
  say "cargo deb"
  rm -f "$out"/kechi_*.deb
  args=(--no-build --output "$out/")
  [ -z "${PKG_MAINTAINER:-}" ] || args+=(--maintainer "$PKG_MAINTAINER")
  cargo deb "${args[@]}" >&2
  found=("$out"/kechi_"$version"-*.deb)
  debfile=${found[0]}
  [ -f "$debfile" ] || die "cargo deb made no .deb in $out"
  paths+=("$debfile")
fi
if [ "$rpm" = 1 ]; then
  say "cargo generate-rpm"
  rm -f "$out"/kechi-*.rpm
  cargo generate-rpm --output "$out/" >&2
  found=("$out"/kechi-"$version"-*.rpm)
  rpmfile=${found[0]}
  [ -f "$rpmfile" ] || die "cargo generate-rpm made no .rpm in $out"
  paths+=("$rpmfile")
fi

if [ "$check" = 1 ]; then
  if [ "$deb" = 1 ]; then
    if command -v lintian > /dev/null; then
      say "lintian $debfile"
      # lintian exits non-zero on errors only
      lintian --info --display-info "$debfile" >&2 || die "lintian found errors"
    else
      say "lintian not installed: not checked (apt-get install lintian)"
    fi
  fi
  if [ "$rpm" = 1 ]; then
    if command -v rpm > /dev/null; then
      say "rpm -qip / -qlp / -qp --requires / -qp --scripts $rpmfile"
      { rpm -qip "$rpmfile"; rpm -qlvp "$rpmfile"; rpm -qp --requires "$rpmfile"; rpm -qp --scripts "$rpmfile"; } >&2
    else
      say "rpm not installed: not checked (apt-get install rpm)"
    fi
  fi
fi

printf '%s\n' "${paths[@]}"
