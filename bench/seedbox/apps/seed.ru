# The seed box's Rack app (bench/seedbox), for puma: at load it builds SEED_MB MiB of data (a
# framework, templates, caches; half of each MiB random, half repeated text, so that compressed swap
# packs it about 2:1 as it does a real heap), then answers every request with a short text.
require 'securerandom'
DATA = Array.new(Integer(ENV.fetch('SEED_MB', '0'))) { SecureRandom.random_bytes(1 << 19) + ('d' * (1 << 19)) }
run lambda { |_env|
  body = "seed rack: worker #{ENV.fetch('KECHI_WORKER', '-')} pid #{Process.pid}\n"
  [200, { 'Content-Type' => 'text/plain', 'Content-Length' => body.bytesize.to_s }, [body]]
}
