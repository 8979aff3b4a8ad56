wrk.method = "POST"
wrk.body = string.rep("p", 256)
wrk.headers["Content-Type"] = "application/octet-stream"
