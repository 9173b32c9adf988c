# A trivial Rack app for kechi's compatibility rows (puma, unicorn): answers every request with
# 200, the worker that served it and $KT_GENERATION, like hello_wsgi.py and hello.psgi.
run lambda { |_env|
  body = "hello from worker #{ENV.fetch('KECHI_WORKER', '?')} pid #{Process.pid} generation #{ENV.fetch('KT_GENERATION', '?')}\n"
  [200, { 'Content-Type' => 'text/plain', 'Content-Length' => body.bytesize.to_s }, [body]]
}
