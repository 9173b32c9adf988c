#!/usr/bin/ruby
# A fragmentation-heavy HTTP worker for bench/allocator: the same work as frag.py, in Ruby.
#
# Serves HTTP/1.1 keep-alive on the socket passed as fd 3 (LISTEN_FDS, as kechid passes it), or
# on 127.0.0.1:$PORT when run by hand. One thread per connection.
#
# Per request (GET any path):
#   - makes FRAG_OBJECTS objects (1 request in FRAG_HEAVY_EVERY makes ten times as many), each a
#     small array holding a string payload whose size is log-uniform between 16 B and 32 KiB;
#   - keeps about 1 in FRAG_KEEP_EVERY of them in a process-wide cache of FRAG_CACHE_SLOTS slots,
#     at a random slot, dropping the object that was there: long-lived data scattered among
#     short-lived data, churned forever;
#   - drops the rest when the request ends and answers "ok N" (N = requests served).
# Every FRAG_COUNT_EVERY requests it writes the number served, as decimal text, at offset 0 of
# FRAG_COUNT_FILE (when set), for the sampler.
require "socket"

OBJECTS = Integer(ENV.fetch("FRAG_OBJECTS", "400"))
HEAVY_EVERY = Integer(ENV.fetch("FRAG_HEAVY_EVERY", "20"))
KEEP_EVERY = Integer(ENV.fetch("FRAG_KEEP_EVERY", "50"))
CACHE_SLOTS = Integer(ENV.fetch("FRAG_CACHE_SLOTS", "8192"))
COUNT_EVERY = Integer(ENV.fetch("FRAG_COUNT_EVERY", "100"))
LN_MIN = Math.log(16)
LN_MAX = Math.log(32_768)

$cache = Array.new(CACHE_SLOTS)
$served = 0
$served_lock = Mutex.new
$count_file = ENV["FRAG_COUNT_FILE"] && File.open(ENV["FRAG_COUNT_FILE"], File::WRONLY | File::CREAT, 0o644)

# The per-request allocation pattern described at the top.
def work(rng, n)
  made = []
  n.times do |i|
    size = Math.exp(rng.rand(LN_MIN...LN_MAX)).to_i
    obj = [i, "x" * size, "k#{i}"]
    made << obj
    # A single array store: atomic under the GVL, no lock needed.
    $cache[rng.rand(CACHE_SLOTS)] = obj if rng.rand(KEEP_EVERY).zero?
  end
  made.size
end

def count_request
  n = $served_lock.synchronize { $served += 1 }
  $count_file.pwrite(format("%-20d\n", n), 0) if $count_file && (n % COUNT_EVERY).zero?
  n
end

def answer(conn, rng)
  buf = +""
  loop do
    until buf.include?("\r\n\r\n")
      chunk = conn.readpartial(65_536)
      buf << chunk
    end
    buf = buf.split("\r\n\r\n", 2)[1]
    n = count_request
    work(rng, OBJECTS * ((n % HEAVY_EVERY).zero? ? 10 : 1))
    body = "ok #{n}\n"
    conn.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: #{body.bytesize}\r\n\r\n#{body}")
  end
end

def serve(conn, seed)
  answer(conn, Random.new(seed))
rescue EOFError, SystemCallError, IOError
  # The client went away (a load generator stopping).
ensure
  conn.close
end

def listening_socket
  return Socket.for_fd(3) if Integer(ENV.fetch("LISTEN_FDS", "0")) > 0

  s = Socket.new(:INET, :STREAM)
  s.setsockopt(:SOCKET, :REUSEADDR, true)
  s.bind(Addrinfo.tcp("127.0.0.1", Integer(ENV.fetch("PORT", "8080"))))
  s.listen(128)
  s
end

Signal.trap("TERM") { exit!(0) }
sock = listening_socket
warn "frag.rb: pid #{Process.pid} serving"
seed = 0
loop do
  conn, = sock.accept
  seed += 1
  Thread.new(conn, seed) { |c, s| serve(c, s) }
end
