wrk.method = "POST"
local f = io.open((os.getenv("OUT") or "/tmp/jetway-prof") .. "/batch.ndjson", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/x-ndjson"
