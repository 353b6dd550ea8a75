// Package partbuf holds large buffers outside the Go heap, shared by the
// code that packs large NARs (narpack's zstd frames) and the code that
// sends them in parts (store's multipart uploads), and the bound on the
// large NARs that stream at once, which sizes both.
package partbuf

import (
	"context"
	"sync"
	"syscall"
)

// PartPool holds the part buffers of streaming uploads (store.Parts) and
// the zstd frames of large NARs (frames.go) outside the Go heap, in
// anonymous mappings made once: they stay resident and warm from NAR to
// NAR, the garbage collector neither scans nor counts them, and the soft
// memory limit is left to everything else. (A sync.Pool of heap buffers is
// emptied by every collection, so each part cost a fresh, zeroed,
// page-faulted 8 MiB.) At most max buffers exist; Get waits for a free one.
type PartPool struct {
	size, max int
	free      chan []byte
	mu        sync.Mutex
	made      int
}

// NewPartPool makes a pool of at most max buffers of size bytes.
func NewPartPool(size, max int) *PartPool {
	return &PartPool{size: size, max: max, free: make(chan []byte, max)}
}

// Get takes a buffer, waiting for a free one when max exist.
func (p *PartPool) Get(ctx context.Context) ([]byte, error) {
	b, ok := p.Take(ctx.Done())
	if !ok {
		return nil, ctx.Err()
	}
	return b, nil
}

// Take takes a buffer, waiting for a free one when max exist, or until
// stop is closed (then false).
func (p *PartPool) Take(stop <-chan struct{}) ([]byte, bool) {
	select {
	case b := <-p.free:
		return b, true
	default:
	}
	if b, ok := p.tryMake(); ok {
		return b, true
	}
	select {
	case b := <-p.free:
		return b, true
	case <-stop:
		return nil, false
	}
}

// Max is the most buffers the pool makes.
func (p *PartPool) Max() int { return p.max }

// Free is how many buffers are in the pool: every buffer is back when it
// is Made.
func (p *PartPool) Free() int { return len(p.free) }

// Made is how many buffers the pool mapped.
func (p *PartPool) Made() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.made
}

// tryMake maps a new buffer unless max exist already.
func (p *PartPool) tryMake() ([]byte, bool) {
	p.mu.Lock()
	if p.made >= p.max {
		p.mu.Unlock()
		return nil, false
	}
	p.made++
	p.mu.Unlock()
	b, err := syscall.Mmap(-1, 0, p.size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		b = make([]byte, p.size)
	}
	return b, true
}

// Put gives a buffer back.
func (p *PartPool) Put(b []byte) { p.free <- b[:p.size] }

// BigStreams bounds the large NARs packed and sent at once: each streams
// through a multipart part buffer and a zstd window, and two keep both
// cores busy. The uploader packs no more at once, and the pools are sized
// for it.
const BigStreams = 2
