package uploader

import (
	"context"
	"sync"
	"syscall"
)

// partPool holds the part buffers of streaming uploads outside the Go heap,
// in anonymous mappings made once: they stay resident and warm from NAR to
// NAR, the garbage collector neither scans nor counts them, and the soft
// memory limit is left to everything else. (A sync.Pool of heap buffers is
// emptied by every collection, so each part cost a fresh, zeroed,
// page-faulted 8 MiB.) At most max buffers exist; get waits for a free one.
type partPool struct {
	size, max int
	free      chan []byte
	mu        sync.Mutex
	made      int
}

func newPartPool(size, max int) *partPool {
	return &partPool{size: size, max: max, free: make(chan []byte, max)}
}

// parts is the pool of the streams bigStreams allows: one buffer each, and
// one more, so that a stream sends a part while the next fills whenever
// the other stream is not doing the same (on two cores, packing one stream
// while sending another keeps both busy as well).
var parts = newPartPool(partSize, bigStreams+1)

func (p *partPool) get(ctx context.Context) ([]byte, error) {
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
func (p *partPool) tryMake() ([]byte, bool) {
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

func (p *partPool) put(b []byte) { p.free <- b[:p.size] }
