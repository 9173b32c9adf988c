# A trivial PSGI app for kechi's zero-downtime scenarios (Starlet through SERVER_STARTER_PORT):
# answers every request with 200, the worker that served it and $KT_GENERATION; GET /env/NAME
# answers with the variable NAME of the app's environment (Starlet's master is perl, whose $0
# writes over the environment block that /proc/PID/environ shows).
my $app = sub {
    my $env = shift;
    if (($env->{PATH_INFO} // "") =~ m{^/env/(\w+)$}) {
        my $body = ($ENV{$1} // "") . "\n";
        return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
    }
    my $body = "hello from worker " . ($ENV{KECHI_WORKER} // "?") . " pid $$ generation "
        . ($ENV{KT_GENERATION} // "?") . "\n";
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
$app;
