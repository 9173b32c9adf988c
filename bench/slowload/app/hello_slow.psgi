# bench/slowload's PSGI app: tests/system/apps/hello.psgi's answer, but the app takes 1 s to load
# (as a real app loading its modules, config and connections would), before any request is served.
use Time::HiRes ();
Time::HiRes::sleep(1);
my $app = sub {
    my $body = "hello from worker " . ($ENV{KECHI_WORKER} // "?") . " pid $$ generation "
        . ($ENV{KT_GENERATION} // "?") . "\n";
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
$app;
