# A PSGI app for kechi's memory scenarios (t_mem_*.sh), run by Starlet's preforking master.
#
# plackup loads this file in the master, before Starlet forks its children: the big array below
# is built once and every child shares its pages copy-on-write, like a preloaded module set.
#   MEM_BIG_N   elements of the array (default 2000000: about 64 MiB of integer scalars)
#
# GET /               200 "pid P big N fat M"
# GET /touch          writes every element of this child's copy of the array (copy-on-write
#                     decay: its pages become private to the child), then waits MEM_TOUCH_WAIT
#                     seconds (default 1) so that concurrent requests land on different children
# GET /fat?mb=M       this child allocates M MiB more (written) and keeps it
# GET /visit?n=K&ms=D takes a reference to K random elements (default 100) and drops it, then
#                     sleeps D ms (default 0: the rest of a request's work): reading data the way
#                     Perl code does writes each element's reference count, so every page it lands
#                     on becomes private to this child (gradual copy-on-write decay, as under real
#                     traffic; bench/cow)
use strict;
use warnings;
use Time::HiRes ();

our @big;
{   # element by element: a list (1 .. N) would leave as many freed temporaries behind
    my $n = $ENV{MEM_BIG_N} || 2_000_000;
    $#big = $n - 1;
    $big[$_] = $_ + 1 for 0 .. $n - 1;
}
our @fat;
our $fat_mb = 0;

my $app = sub {
    my $env = shift;
    my $path = $env->{PATH_INFO} // '/';
    if ($path eq '/touch') {
        $_++ for @big;
        Time::HiRes::sleep($ENV{MEM_TOUCH_WAIT} // 1);
    } elsif ($path eq '/visit') {
        my ($n) = ($env->{QUERY_STRING} // '') =~ /n=(\d+)/;
        $n //= 100;
        for (1 .. $n) {
            my $ref = \$big[rand @big];
        }
        my ($ms) = ($env->{QUERY_STRING} // '') =~ /ms=(\d+)/;
        Time::HiRes::sleep($ms / 1000) if $ms;
    } elsif ($path eq '/fat') {
        my ($mb) = ($env->{QUERY_STRING} // '') =~ /mb=(\d+)/;
        $mb //= 100;
        push @fat, "\x01" x ($mb << 20);
        $fat_mb += $mb;
    }
    my $body = "pid $$ big " . scalar(@big) . " fat $fat_mb\n";
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
$app;
