# A trivial PSGI app for kechi's zero-downtime scenarios (Starlet through SERVER_STARTER_PORT):
# answers every request with 200, the worker that served it and $KT_GENERATION.
my $app = sub {
    my $body = "hello from worker " . ($ENV{KECHI_WORKER} // "?") . " pid $$ generation "
        . ($ENV{KT_GENERATION} // "?") . "\n";
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
$app;
