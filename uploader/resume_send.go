package uploader

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nixpush/nixpush/store"
)

// send reads the compressed NAR from src part by part and uploads it.
func (r *resumable) send(ctx context.Context, src io.Reader) error {
	buf, err := store.Parts.Get(ctx)
	if err != nil {
		return err
	}
	n, rerr := io.ReadFull(src, buf)
	if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
		// Less than a part: one PUT; an upload recorded before goes.
		defer store.Parts.Put(buf)
		if ju, ok, _ := r.j.LoadUpload(r.info.Path); ok {
			r.id, r.upKey = ju.ID, recordKey(ju, r.want.Key)
			r.discard(ctx)
		}
		return r.ms.Put(ctx, r.want.Key, bytes.NewReader(buf[:n]), int64(n), "application/x-nix-nar")
	}
	if rerr != nil {
		store.Parts.Put(buf)
		return rerr
	}
	if err := r.open(ctx); err != nil {
		store.Parts.Put(buf)
		return err
	}
	ps, err := r.sendParts(ctx, src, buf, n, rerr)
	if err != nil {
		return err
	}
	return r.complete(ctx, ps)
}

// partsSent is what sendParts did: every part, in order, and the bytes it
// found in the store (skipped) and sent.
type partsSent struct {
	all           []store.Part
	skipped, sent int64
}

// partResult is a part sent, or why it could not be.
type partResult struct {
	part store.Part
	err  error
}

// sendParts sends the parts of the upload, the first already read into
// buf (n bytes, with ReadFull's rerr) and the rest read from src: each
// part the store holds is checked rather than sent again, and the next
// part is read, so packed and compressed, while the previous one is
// sent. It returns once every part is in and its record committed.
func (r *resumable) sendParts(ctx context.Context, src io.Reader, buf []byte, n int, rerr error) (partsSent, error) {
	var ps partsSent
	var inflight <-chan partResult
	wait := func() error {
		if inflight == nil {
			return nil
		}
		res := <-inflight
		inflight = nil
		if res.err != nil {
			return res.err
		}
		ps.all = append(ps.all, res.part)
		return nil
	}
	var recs sync.WaitGroup // records of parts sent, committing
	defer recs.Wait()
	for num := 1; ; num++ {
		h, stored := r.have[num]
		md := ""
		if stored || r.etags.Load() != etagsAreMD5 {
			sum := md5.Sum(buf[:n])
			md = hex.EncodeToString(sum[:])
		}
		check := errResend
		if stored {
			check = r.check(num, h, md, n)
		}
		if check == nil {
			ps.all = append(ps.all, store.Part{Num: num, ETag: r.have[num].ETag, Size: int64(n), MD5: md})
			ps.skipped += int64(n)
			store.Parts.Put(buf)
		} else if check != errResend {
			store.Parts.Put(buf)
			wait()
			return ps, r.startOver(ctx, check.Error())
		} else {
			if err := wait(); err != nil {
				store.Parts.Put(buf)
				return ps, err
			}
			inflight = r.sendPart(ctx, num, buf, n, md, &recs)
			ps.sent += int64(n)
		}
		if rerr == io.ErrUnexpectedEOF {
			break // that was the last part
		}
		if num == store.MaxParts {
			wait()
			return ps, store.Permanent(fmt.Errorf("%s put %s: more than %d parts of %d MiB", r.ms, r.want.Key, store.MaxParts, store.PartSize>>20))
		}
		var err error
		if buf, err = store.Parts.Get(ctx); err != nil {
			wait()
			return ps, err
		}
		n, rerr = io.ReadFull(src, buf)
		if rerr == io.EOF {
			store.Parts.Put(buf)
			break
		}
		if rerr != nil && rerr != io.ErrUnexpectedEOF {
			store.Parts.Put(buf)
			wait()
			return ps, rerr
		}
	}
	err := wait()
	return ps, err
}

// sendPart sends part num (buf[:n], MD5 md when known) on a goroutine of
// its own, which gives buf back to the pool, and returns where its result
// comes. The record of the part commits after the result is out, counted
// in recs.
func (r *resumable) sendPart(ctx context.Context, num int, buf []byte, n int, md string, recs *sync.WaitGroup) <-chan partResult {
	ch := make(chan partResult, 1)
	recs.Add(1)
	go func() {
		defer recs.Done()
		etag, err := r.ms.PutPart(ctx, r.want.Key, r.id, num, buf[:n])
		store.Parts.Put(buf)
		if err == nil && md != "" && r.etags.Load() == etagsUnknown {
			if etag == md {
				r.etags.CompareAndSwap(etagsUnknown, etagsAreMD5)
			} else {
				r.etags.CompareAndSwap(etagsUnknown, etagsOpaque)
			}
		}
		p := store.Part{Num: num, ETag: etag, Size: int64(n), MD5: md}
		// The next part goes at once; the record of this one
		// commits meanwhile (a kill before it commits costs at
		// most a check of the part by its ETag, or sending it
		// again). A gap here would waste the upload cap's budget.
		ch <- partResult{p, err}
		if err == nil && !r.unrecorded {
			if jerr := r.j.AddUploadPart(r.info.Path, r.id, p); jerr != nil {
				r.u.cfg.Log.Warn().Err(jerr).Str("path", r.info.Path).Int("part", num).Msg("record uploaded part")
			}
		}
	}()
	return ch
}

// complete completes the upload of the parts ps sent, forgets its record
// and marker, and counts the bytes a resume did not send again.
func (r *resumable) complete(ctx context.Context, ps partsSent) error {
	if err := r.ms.Complete(ctx, r.want.Key, r.id, ps.all); err != nil {
		return err
	}
	if err := r.j.DropUpload(r.info.Path, r.id); err != nil {
		r.u.cfg.Log.Warn().Err(err).Str("path", r.info.Path).Msg("forget completed upload (it is aborted, harmlessly, when the queue drains)")
	}
	r.u.deleteMarker(ctx, r.want.Key, r.id)
	if r.resumed {
		r.u.cfg.Log.Info().Str("path", r.info.Path).Str("upload_id", r.id).Int64("bytes_resent", ps.sent).
			Int64("bytes_already_there", ps.skipped).Int("parts", len(ps.all)).Msg("resumed upload completed")
	}
	r.u.mu.Lock()
	r.u.stats.ResumedBytes += ps.skipped
	r.u.mu.Unlock()
	return nil
}

// errResend: a part the store holds that cannot be checked (an ETag that
// is not an MD5, and no record of it): it is sent again.
var errResend = errors.New("resend")

// check compares a part the store holds with the part as packed now (MD5
// md, n bytes): nil if it matches, errResend if it cannot tell, else an
// error saying how it differs.
func (r *resumable) check(num int, h storedPart, md string, n int) error {
	switch {
	case h.conflict != "":
		return fmt.Errorf("part %d in the store is not the one recorded (%s)", num, h.conflict)
	case h.Size != int64(n):
		return fmt.Errorf("part %d is %d bytes in the store and %d bytes now", num, h.Size, n)
	case h.recorded && h.MD5 != "" && h.MD5 != md:
		return fmt.Errorf("part %d had MD5 %s when sent and has %s now (the compressed stream changed)", num, h.MD5, md)
	case isMD5(h.ETag) && h.ETag != md:
		return fmt.Errorf("part %d has ETag %s in the store, not the MD5 %s of the part now (the compressed stream changed)", num, h.ETag, md)
	case isMD5(h.ETag) || (h.recorded && h.MD5 != ""):
		return nil
	}
	return errResend
}

func isMD5(etag string) bool {
	if len(etag) != 32 {
		return false
	}
	_, err := hex.DecodeString(etag)
	return err == nil
}
