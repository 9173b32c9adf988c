# puma config for kechi's compatibility rows (docs/APP-SERVERS.md, "puma"): puma 5.6 closes a
# kept-alive connection at shutdown right after a response that promised to keep it open, while
# the client's next request is already in its receive buffer (the kernel answers with RST). With
# queue_requests off, puma says "Connection: close" on every response and never keeps a
# connection: no request is in flight when it closes one.
queue_requests false
