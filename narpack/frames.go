package narpack

import (
	"errors"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/nixpush/nixpush/internal/partbuf"
)

// With more than two cores (zstdFrames), a large NAR is compressed with
// zstd as a sequence of independent frames, one per frameSize bytes of NAR,
// compressed on every core at once (up to frameCores) and written in order. zstd's format allows any number of frames one after
// the other, and every decoder reads them as one stream (Nix 2.8 through
// libarchive, Nix 2.34 through libzstd, which makes such files itself: Nix
// 2.35 compresses in 16 MiB frames on 4 threads). A single zstd stream
// keeps one NAR on at most two cores (an encoder block compresses while the
// next fills), so one large path, or the last of a push, left cores idle.
//
// The output is the same bytes for the same NAR whatever the number of
// cores, the scheduling or the paths packed beside it: the frame layout
// depends only on frameSize, and each frame is EncodeAll of its chunk with
// the fixed settings of frameEncoder. Resumable uploads rely on this: a
// NAR packed again is byte-identical. The number of cores (GOMAXPROCS)
// only bounds how many frames are in flight and how many compress at once;
// it changes no byte of the output.
//
// The cost, against one stream with the same 1 MiB window: each frame
// starts with an empty history, so the first matches of every frame are
// lost, plus a frame header and checksum every frameSize bytes (about 20
// bytes per 4 MiB): 0.1% more compressed bytes on the Go toolchain's
// binaries, 0.6% on its sources, 1.2% on /usr/share/doc
// (BenchmarkFrameRatio; docs/performance.md).

// frameSize is the NAR bytes in each zstd frame of a large NAR. It is a
// constant, not a function of the cores, so the compressed NAR does not
// depend on the machine that packed it. 4 MiB is four times the window:
// a frame loses at most its first window's worth of history.
const frameSize = 4 << 20

// frameBound is the largest a compressed frame of frameSize bytes can be:
// incompressible blocks are stored raw with a 3-byte header per 128 KiB
// block, plus the frame header and checksum.
const frameBound = frameSize + frameSize/64 + 1024

// frameEncoder compresses the frames of large NARs and, with the same
// settings, each small NAR (PackSmall): EncodeAll is safe for concurrent
// use, and its pool of encoder states, one per core, bounds the
// compressions under way across every stream and job at once.
var frameEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithWindowSize(maxWindow),
		zstd.WithZeroFrames(true)) // empty input: an empty frame, not nothing
})

// frameBufs holds the buffers of frames in flight, a chunk of NAR and its
// compressed frame each (8.1 MiB), shared by every large NAR being packed
// (BigStreams at once): one per core compressing, up to frameCores, and one
// more, filling while they compress (a compressed frame is written out to
// the upload's part buffer as soon as it is its turn), so several large
// NARs at once wait for buffers rather than each taking memory of its own.
// Like the part buffers, they are mapped outside the Go heap, so the soft
// memory limit does not count them, and kept once mapped: 32 MiB of
// resident memory on three cores, 40 MiB from four cores up (24 MiB on
// two, where frames are used only when NIXPUSH_ZSTD_FRAMES=on). Two per
// core, 32 MiB on two cores, made the daemon's peak 75 MiB against 46 MiB
// with one zstd stream per NAR.
var frameBufs = sync.OnceValue(func() *partbuf.PartPool {
	return partbuf.NewPartPool(frameSize+frameBound, min(runtime.GOMAXPROCS(0), frameCores)+1)
})

// frameCores is the most cores frames are compressed on at once, which
// bounds the memory of frames in flight: beyond it the one goroutine that
// packs and hashes the NAR (SHA-256 of the NAR at ~700 MB/s here) is the
// limit anyway. Nix 2.35 compresses on 4 threads too.
const frameCores = 4

// frame is one chunk of NAR on its way to the output.
type frame struct {
	buf  []byte // from frameBufs: the chunk, then the room for the frame
	n    int    // NAR bytes in the chunk
	out  []byte // the compressed frame, once done is closed
	done chan struct{}
}

// frameWriter compresses what is written to it into w as independent zstd
// frames of frameSize bytes each, compressed concurrently, written in
// order by a goroutine of its own. Close flushes the last frame and waits
// for every frame to be written; it does not close w.
type frameWriter struct {
	w       io.Writer
	enc     *zstd.Encoder
	bufs    *partbuf.PartPool
	cur     *frame
	queue   chan *frame   // frames in order, to the writing goroutine
	failed  chan struct{} // closed when writing to w failed
	written chan struct{} // closed when the writing goroutine returns
	err     error         // why writing failed; read after failed or written is closed
	wrote   bool          // a frame went to the queue
	closed  bool
}

func newFrameWriter(w io.Writer) (*frameWriter, error) {
	enc, err := frameEncoder()
	if err != nil {
		return nil, err
	}
	bufs := frameBufs()
	f := &frameWriter{w: w, enc: enc, bufs: bufs, queue: make(chan *frame, bufs.Max()),
		failed: make(chan struct{}), written: make(chan struct{})}
	go f.writeFrames()
	return f, nil
}

// writeFrames writes each frame once it is compressed, in order, and gives
// its buffer back; after a failed write it only gives buffers back.
func (f *frameWriter) writeFrames() {
	defer close(f.written)
	for fr := range f.queue {
		<-fr.done
		if f.err == nil {
			if _, err := f.w.Write(fr.out); err != nil {
				f.err = err
				close(f.failed)
			}
		}
		f.bufs.Put(fr.buf)
	}
}

var errFrameWriterClosed = errors.New("zstd frames: write after close")

func (f *frameWriter) Write(p []byte) (int, error) {
	if f.closed {
		return 0, errFrameWriterClosed
	}
	n := 0
	for len(p) > 0 {
		if f.cur == nil {
			buf, err := f.getBuf()
			if err != nil {
				return n, err
			}
			f.cur = &frame{buf: buf, done: make(chan struct{})}
		}
		c := copy(f.cur.buf[f.cur.n:frameSize], p)
		f.cur.n += c
		n += c
		p = p[c:]
		if f.cur.n == frameSize {
			f.send()
		}
	}
	return n, nil
}

// getBuf waits for a free frame buffer, or for the writing goroutine to
// fail.
func (f *frameWriter) getBuf() ([]byte, error) {
	select {
	case <-f.failed:
		return nil, f.err
	default:
	}
	if b, ok := f.bufs.Take(f.failed); ok {
		return b, nil
	}
	return nil, f.err
}

// send starts compressing the current chunk and queues it for writing.
// The queue holds as many frames as there are buffers, so this never
// blocks.
func (f *frameWriter) send() {
	fr := f.cur
	f.cur = nil
	f.wrote = true
	go func() {
		defer close(fr.done)
		// The room after the chunk holds any frame of it (frameBound), so
		// EncodeAll never allocates.
		fr.out = f.enc.EncodeAll(fr.buf[:fr.n], fr.buf[frameSize:frameSize:len(fr.buf)])
	}()
	f.queue <- fr
}

// Close compresses and writes the last frame (an empty frame when nothing
// was written, so the output is a valid zstd stream), waits until every
// frame is written and says whether writing failed.
func (f *frameWriter) Close() error {
	if f.closed {
		return errFrameWriterClosed
	}
	f.closed = true
	if f.cur == nil && !f.wrote {
		if buf, err := f.getBuf(); err == nil {
			f.cur = &frame{buf: buf, done: make(chan struct{})}
		}
	}
	if f.cur != nil {
		f.send()
	}
	close(f.queue)
	<-f.written
	return f.err
}
