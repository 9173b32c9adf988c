-- bench/restart/result.lua: a wrk script that only adds one machine-readable line at the end of
-- wrk's report: requests, duration and error counts, and latency percentiles in microseconds.
-- (wrk's own text rounds them to two digits and mixes units.)
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "result requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d non2xx=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
