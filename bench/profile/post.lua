wrk.method = "POST"
wrk.body = string.rep("p", tonumber(os.getenv("PAYLOAD") or "256"))
wrk.headers["Content-Type"] = "application/octet-stream"
