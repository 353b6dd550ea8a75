package testenv

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 in front of a server, for the faults a
// real server does not produce on demand: every connection cut at once in
// the middle of a request, and a bandwidth limit on requests so that an
// upload is surely in flight when a fault is injected, however fast the
// machine. It watches the HTTP/1.1 requests that pass, just enough to tell
// whether a PUT is under way, and to answer a share of them 503 SlowDown
// itself, as an overloaded S3 does.
type Proxy struct {
	Addr   string // 127.0.0.1:PORT
	target string
	ln     net.Listener

	mu       sync.Mutex
	rate     int     // client-to-server bytes per second; 0: unlimited
	slowDown float64 // share of requests answered 503 SlowDown
	conns    map[*proxyConn]struct{}

	sent      atomic.Int64 // client-to-server bytes forwarded
	requestsN atomic.Int64 // requests forwarded
	slowed    atomic.Int64 // requests answered 503 SlowDown

	log []Exchange // requests forwarded, with their times
}

// Exchange is one request forwarded: when its head came, when the last
// byte of its body was passed on, and when the answer's first byte came
// back (zero while none).
type Exchange struct {
	Method                 string
	Bytes                  int64 // head and body
	Start, BodyEnd, Answer time.Time
}

// Exchanges is the requests forwarded so far, in the order they came.
func (p *Proxy) Exchanges() []Exchange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Exchange(nil), p.log...)
}

// proxyConn is one client connection and its upstream.
type proxyConn struct {
	client, server net.Conn
	wmu            sync.Mutex // writes to client: answers, and 503s of the proxy's own
	mu             sync.Mutex
	inRequest      bool   // request bytes sent, no answer byte since
	method         []byte // of the request under way
	sent           int64  // its bytes so far
	ex             int    // its index in the proxy's log; -1: none
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

// SetSlowDown answers share (0 to 1) of the requests that follow with
// "503 SlowDown" (no Retry-After, as S3), without passing them on; 0 ends it.
func (p *Proxy) SetSlowDown(share float64) {
	p.mu.Lock()
	p.slowDown = share
	p.mu.Unlock()
}

// Sent is the bytes passed on from clients to the server so far.
func (p *Proxy) Sent() int64 { return p.sent.Load() }

// Requests is the requests passed on to the server so far, and SlowedDown
// those answered 503 SlowDown by the proxy.
func (p *Proxy) Requests() int64   { return p.requestsN.Load() }
func (p *Proxy) SlowedDown() int64 { return p.slowed.Load() }

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
		c := &proxyConn{client: client, server: server, ex: -1}
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

// requests copies client to server, at most rate bytes a second, request
// by request (HTTP/1.1 with Content-Length; from a chunked one on, the rest
// of the connection is copied as it comes).
func (p *Proxy) requests(c *proxyConn) {
	br := bufio.NewReaderSize(c.client, 16<<10)
	for {
		head, err := readHead(br)
		if err != nil {
			return
		}
		c.mu.Lock()
		c.inRequest, c.sent = true, 0
		c.method, _, _ = bytes.Cut(bytes.Clone(head[:min(len(head), 8)]), []byte(" "))
		c.mu.Unlock()
		length, framed := bodyLength(head)
		p.mu.Lock()
		share := p.slowDown
		p.mu.Unlock()
		if framed && share > 0 && rand.Float64() < share && !bytes.Contains(bytes.ToLower(head), []byte("expect: 100-continue")) {
			if _, err := io.CopyN(io.Discard, br, length); err != nil {
				return
			}
			p.slowed.Add(1)
			const body = `<?xml version="1.0" encoding="UTF-8"?>` + "\n" +
				`<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`
			answer := "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: " +
				strconv.Itoa(len(body)) + "\r\nServer: nixpush-test-proxy\r\n\r\n" + body
			c.mu.Lock()
			c.inRequest = false
			c.mu.Unlock()
			c.wmu.Lock()
			_, err := c.client.Write([]byte(answer))
			c.wmu.Unlock()
			if err != nil {
				return
			}
			continue
		}
		p.requestsN.Add(1)
		p.mu.Lock()
		p.log = append(p.log, Exchange{Method: string(c.method), Bytes: int64(len(head)) + length, Start: time.Now()})
		ex := len(p.log) - 1
		p.mu.Unlock()
		c.mu.Lock()
		c.ex = ex
		c.mu.Unlock()
		if !p.forward(c, head) {
			return
		}
		if !framed {
			p.copyLimited(c, br, -1)
			return
		}
		if !p.copyLimited(c, br, length) {
			return
		}
		p.mu.Lock()
		p.log[ex].BodyEnd = time.Now()
		p.mu.Unlock()
	}
}

// readHead reads a request's line and headers, through the blank line.
func readHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return nil, err
		}
		if bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) {
			return head, nil
		}
	}
}

// bodyLength is a request head's Content-Length (0 when none); false for a
// chunked body.
func bodyLength(head []byte) (int64, bool) {
	var n int64
	for _, line := range bytes.Split(head, []byte("\r\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch string(bytes.ToLower(bytes.TrimSpace(k))) {
		case "transfer-encoding":
			return 0, false
		case "content-length":
			n, _ = strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
		}
	}
	return n, true
}

// forward sends b to the server at the rate, counting it.
func (p *Proxy) forward(c *proxyConn, b []byte) bool {
	c.mu.Lock()
	c.sent += int64(len(b))
	c.mu.Unlock()
	p.sent.Add(int64(len(b)))
	if _, err := c.server.Write(b); err != nil {
		return false
	}
	p.mu.Lock()
	rate := p.rate
	p.mu.Unlock()
	if rate > 0 {
		time.Sleep(time.Duration(len(b)) * time.Second / time.Duration(rate))
	}
	return true
}

// copyLimited forwards n bytes of br (n < 0: until the connection ends),
// in chunks of a twentieth of the rate.
func (p *Proxy) copyLimited(c *proxyConn, br *bufio.Reader, n int64) bool {
	buf := make([]byte, 16<<10)
	for n != 0 {
		p.mu.Lock()
		rate := p.rate
		p.mu.Unlock()
		chunk := buf
		if rate > 0 {
			chunk = buf[:min(len(buf), max(rate/20, 512))]
		}
		if n > 0 && int64(len(chunk)) > n {
			chunk = chunk[:n]
		}
		k, err := br.Read(chunk)
		if k > 0 {
			if !p.forward(c, chunk[:k]) {
				return false
			}
			if n > 0 {
				n -= int64(k)
			}
		}
		if err != nil {
			return false
		}
	}
	return true
}

// answers copies server to client; an answer ends the request under way.
func (p *Proxy) answers(c *proxyConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.server.Read(buf)
		if n > 0 {
			c.mu.Lock()
			c.inRequest = false
			ex := c.ex
			c.ex = -1
			c.mu.Unlock()
			if ex >= 0 {
				p.mu.Lock()
				if p.log[ex].Answer.IsZero() {
					p.log[ex].Answer = time.Now()
				}
				p.mu.Unlock()
			}
			c.wmu.Lock()
			_, werr := c.client.Write(buf[:n])
			c.wmu.Unlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
