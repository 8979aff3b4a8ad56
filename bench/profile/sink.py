import http.server, socketserver, sys, threading
count=0; lock=threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version="HTTP/1.1"
    def log_message(self,*a): pass
    def do_POST(self):
        global count
        n=int(self.headers.get('content-length','0')); self.rfile.read(n)
        with lock: count+=1
        self.send_response(200); self.send_header('content-length','0'); self.end_headers()
    def do_GET(self):
        b=str(count).encode()
        self.send_response(200); self.send_header('content-length',str(len(b))); self.end_headers(); self.wfile.write(b)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads=True
S(('127.0.0.1',int(sys.argv[1])),H).serve_forever()
