# The seed box's busy app (bench/seedbox): a PSGI app for Starlet that stands for a real one.
# At load it builds SEED_MB MiB of data (a framework, templates, caches: in Starlet's master, so
# its children share it until they write to it); each request then keeps SEED_LEAK_KB KiB in the
# child that served it (a cache that only grows: the bloat kechi exists to recycle away). Half of
# every block is random, half repeated text: compressed swap (zram) packs it about 2:1, as it does
# a real heap, instead of the near nothing that repeated text alone would cost it.
use strict;
use warnings;

open my $urandom, '<:raw', '/dev/urandom' or die "/dev/urandom: $!";
sub block {    # block(KIB): KIB KiB, half random, half text
    my $half = 512 * shift;
    read($urandom, my $r, $half) == $half or die "/dev/urandom: short read";
    return $r . ("d" x $half);
}
my $mb = $ENV{SEED_MB} // 0;
my @data = map { block(1024) } 1 .. $mb;
my $leak_kb = $ENV{SEED_LEAK_KB} // 0;
my @kept;

my $app = sub {
    push @kept, block($leak_kb) if $leak_kb;
    my $body = "seed psgi: worker " . ($ENV{KECHI_WORKER} // "-") . " pid $$ kept "
        . scalar(@kept) . "\n";
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
$app;
