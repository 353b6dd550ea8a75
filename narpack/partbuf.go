package narpack

import (
	"context"
	"sync"
	"syscall"
)

// PartPool holds the part buffers of streaming uploads (and the zstd frames
// of large NARs, frames.go) outside the Go heap, in anonymous mappings made
// once: they stay resident and warm from NAR to NAR, the garbage collector
// neither scans nor counts them, and the soft memory limit is left to
// everything else. (A sync.Pool of heap buffers is emptied by every
// collection, so each part cost a fresh, zeroed, page-faulted 8 MiB.) At
// most max buffers exist; Get waits for a free one.
type PartPool struct {
	size, max int
	free      chan []byte
	mu        sync.Mutex
	made      int
}

// NewPartPool makes a pool of at most max buffers of size bytes each.
func NewPartPool(size, max int) *PartPool {
	return &PartPool{size: size, max: max, free: make(chan []byte, max)}
}

// Get returns a free buffer, mapping a new one while fewer than max exist,
// else waiting for one to be put back or for ctx to be done.
func (p *PartPool) Get(ctx context.Context) ([]byte, error) {
	select {
	case b := <-p.free:
		return b, nil
	default:
	}
	if b, ok := p.tryMake(); ok {
		return b, nil
	}
	select {
	case b := <-p.free:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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

// Put gives b, from Get, back to the pool.
func (p *PartPool) Put(b []byte) { p.free <- b[:p.size] }
