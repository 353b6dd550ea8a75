package testenv

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 in front of a server, for the faults a
// real server does not produce on demand: every connection cut at once in
// the middle of a request, and a bandwidth limit on requests so that an
// upload is surely in flight when a fault is injected, however fast the
// machine. It watches the HTTP/1.1 requests that pass, just enough to tell
// whether a PUT is under way.
type Proxy struct {
	Addr   string // 127.0.0.1:PORT
	target string
	ln     net.Listener

	mu    sync.Mutex
	rate  int // client-to-server bytes per second; 0: unlimited
	conns map[*proxyConn]struct{}
}

// proxyConn is one client connection and its upstream.
type proxyConn struct {
	client, server net.Conn
	mu             sync.Mutex
	inRequest      bool   // request bytes sent, no answer byte since
	method         []byte // of the request under way
	sent           int64  // its bytes so far
}

// NewProxy starts a proxy to target (host:port); it stops at cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[*proxyConn]struct{}{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.Cut() })
	return p
}

// SetRate limits request bytes (client to server) to n bytes per second
// on each connection; 0 lifts the limit.
func (p *Proxy) SetRate(n int) {
	p.mu.Lock()
	p.rate = n
	p.mu.Unlock()
}

// UploadsInFlight counts connections on which a PUT (or a multipart
// upload's POST) has sent more than minBytes and had no answer yet.
func (p *Proxy) UploadsInFlight(minBytes int64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		c.mu.Lock()
		if c.inRequest && (bytes.Equal(c.method, []byte("PUT")) || bytes.Equal(c.method, []byte("POST"))) && c.sent > minBytes {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// Cut closes every open connection at once, both ways, mid-request or not.
// New connections are accepted as before.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[*proxyConn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		c.client.Close()
		c.server.Close()
	}
}

func (p *Proxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxyConn{client: client, server: server}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		go func() {
			p.requests(c)
			client.Close()
			server.Close()
		}()
		go func() {
			p.answers(c)
			client.Close()
			server.Close()
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}()
	}
}

// requests copies client to server, at most rate bytes a second.
func (p *Proxy) requests(c *proxyConn) {
	buf := make([]byte, 16<<10)
	for {
		p.mu.Lock()
		rate := p.rate
		p.mu.Unlock()
		chunk := buf
		if rate > 0 {
			chunk = buf[:min(len(buf), max(rate/20, 512))]
		}
		n, err := c.client.Read(chunk)
		if n > 0 {
			c.mu.Lock()
			if !c.inRequest {
				c.inRequest, c.sent = true, 0
				c.method, _, _ = bytes.Cut(bytes.Clone(chunk[:min(n, 8)]), []byte(" "))
			}
			c.sent += int64(n)
			c.mu.Unlock()
			if _, werr := c.server.Write(chunk[:n]); werr != nil {
				return
			}
			if rate > 0 {
				time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
			}
		}
		if err != nil {
			return
		}
	}
}

// answers copies server to client; an answer ends the request under way.
func (p *Proxy) answers(c *proxyConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.server.Read(buf)
		if n > 0 {
			c.mu.Lock()
			c.inRequest = false
			c.mu.Unlock()
			if _, werr := c.client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
