#!/bin/bash
# scripts/lib/cargo.sh — find cargo where rustup put it, also under sudo (sourced, not run).
#
#   . scripts/lib/cargo.sh
#   use_cargo || { echo "cargo is needed (https://rustup.rs)" >&2; exit 1; }
#
# rustup installs cargo in ~/.cargo/bin and adds that to the login shell's PATH only; sudo's
# secure_path (Debian's default) drops it, and sudo may set HOME to root's. So cargo is looked
# for on PATH, then in $CARGO_HOME, ~/.cargo and the ~/.cargo of the user who ran sudo
# ($SUDO_USER). use_cargo puts the one found first on PATH; when it belongs to another user's
# home, it also points CARGO_HOME and RUSTUP_HOME there, or rustup's cargo would look for its
# toolchains in root's home.

# find_cargo: the path of cargo, or status 1
find_cargo() {
  local c h
  c=$(command -v cargo 2> /dev/null) && { echo "$c"; return 0; }
  for h in "${CARGO_HOME:-}" "$HOME/.cargo" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo"}; do
    [ -n "$h" ] && [ -x "$h/bin/cargo" ] && { echo "$h/bin/cargo"; return 0; }
  done
  return 1
}

# use_cargo: cargo (and cargo-installed tools beside it) on PATH; status 1 when there is none
use_cargo() {
  local cargo bin home
  cargo=$(find_cargo) || return 1
  bin=$(dirname "$cargo")
  case ":$PATH:" in *":$bin:"*) ;; *) PATH="$bin:$PATH" ;; esac
  export PATH
  # ~/.cargo/bin/cargo of a home that is not $HOME: that user's rustup state
  home=$(dirname "$(dirname "$bin")")
  if [ "$(basename "$(dirname "$bin")")" = .cargo ] && [ "$home" != "$HOME" ] && [ -z "${CARGO_HOME:-}" ]; then
    export CARGO_HOME="$home/.cargo"
    [ -d "$home/.rustup" ] && [ -z "${RUSTUP_HOME:-}" ] && export RUSTUP_HOME="$home/.rustup"
  fi
  return 0
}
