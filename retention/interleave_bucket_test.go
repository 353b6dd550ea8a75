package retention_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixpush/nixpush/store"
)

// clock is the harness's time. It is real time plus an offset the
// harness may move forward while no sweep runs or will run: retention.GC
// reads time.Now itself (its deadline, finished_at), so the daemons'
// clock may not drift from it while one is up. Once GCOptions and
// uploader.Config take a clock of their own, a virtual one fits here.
type clock interface {
	Now() time.Time
	Advance(d time.Duration)
}

type realClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *realClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *realClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// memObject is one object of a memBucket.
type memObject struct {
	data []byte
	mod  time.Time
	etag string
}

// memBucket is an in-memory store.Bucket: ETags are content hashes,
// LastModified comes from the harness clock, conditional writes compare
// and swap. Every method is one atomic step; the gate (gated) decides
// when it runs.
type memBucket struct {
	clk  clock
	mu   sync.Mutex
	objs map[string]*memObject
}

func newMemBucket(clk clock) *memBucket {
	return &memBucket{clk: clk, objs: make(map[string]*memObject)}
}

func etagOf(data []byte) string {
	sum := sha256.Sum256(data)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

func notExist(key string) error { return fmt.Errorf("%s: %w", key, store.ErrNotExist) }

func (m *memBucket) String() string { return "mem://interleave" }

func (m *memBucket) Has(ctx context.Context, key string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.objs[key]
	return ok, nil
}

func (m *memBucket) put(key string, data []byte) string {
	o := &memObject{data: data, mod: m.clk.Now(), etag: etagOf(data)}
	m.objs[key] = o
	return o.etag
}

func (m *memBucket) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if size >= 0 && int64(len(data)) != size {
		return fmt.Errorf("put %s: %d bytes, said %d", key, len(data), size)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.put(key, data)
	return nil
}

func (m *memBucket) Get(ctx context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return nil, notExist(key)
	}
	return bytes.Clone(o.data), nil
}

func (m *memBucket) object(key string, o *memObject) store.Object {
	return store.Object{Key: key, Size: int64(len(o.data)), LastModified: o.mod, ETag: o.etag}
}

// snapshot lists the objects under prefix, in key order, as they are now.
func (m *memBucket) snapshot(prefix string) []store.Object {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Object
	for k, o := range m.objs {
		if strings.HasPrefix(k, prefix) {
			out = append(out, m.object(k, o))
		}
	}
	slices.SortFunc(out, func(a, b store.Object) int { return strings.Compare(a.Key, b.Key) })
	return out
}

func (m *memBucket) List(ctx context.Context, prefix string, fn func(store.Object) error) error {
	for _, o := range m.snapshot(prefix) {
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

func (m *memBucket) Stat(ctx context.Context, key string) (store.Object, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return store.Object{}, notExist(key)
	}
	return m.object(key, o), nil
}

func (m *memBucket) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	data, err := m.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

func (m *memBucket) Delete(ctx context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objs, key)
	return nil
}

func (m *memBucket) DeleteMany(ctx context.Context, keys []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range keys {
		delete(m.objs, k)
	}
	return nil
}

func (m *memBucket) ListUploads(ctx context.Context, fn func(store.PendingUpload) error) error {
	return nil
}

func (m *memBucket) AbortUpload(ctx context.Context, up store.PendingUpload) error { return nil }

func (m *memBucket) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return nil, "", notExist(key)
	}
	return bytes.Clone(o.data), o.etag, nil
}

func (m *memBucket) PutIf(ctx context.Context, key string, data []byte, ct, etag string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	switch {
	case etag == "" && ok, etag != "" && (!ok || o.etag != etag):
		return "", fmt.Errorf("put %s: %w", key, store.ErrConditionFailed)
	}
	return m.put(key, bytes.Clone(data)), nil
}

// age sets the LastModified of every object to d ago: what was pushed
// long before the run.
func (m *memBucket) age(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	at := m.clk.Now().Add(-d)
	for _, o := range m.objs {
		o.mod = at
	}
}

// gated is one actor's view of the bucket: every request waits for the
// scheduler's grant and then runs as one step.
type gated struct {
	m     *memBucket
	s     *scheduler
	actor string
}

var _ store.Bucket = (*gated)(nil)

func (g *gated) String() string { return g.m.String() }

func (g *gated) do(ctx context.Context, kind, key string, body []byte, fn func() error) error {
	return g.s.gate(ctx, &op{actor: g.actor, job: jobOf(ctx), kind: kind, key: key, body: body, run: fn})
}

func (g *gated) Has(ctx context.Context, key string) (has bool, err error) {
	o := &op{actor: g.actor, job: jobOf(ctx), kind: "has", key: key}
	o.run = func() error {
		has, err = g.m.Has(ctx, key)
		o.out = map[bool]string{true: "present", false: "missing"}[has]
		return err
	}
	err = g.s.gate(ctx, o)
	return has, err
}

func (g *gated) Put(ctx context.Context, key string, r io.Reader, size int64, ct string) error {
	data, err := io.ReadAll(r) // the client's side: before the request
	if err != nil {
		return err
	}
	return g.do(ctx, "put", key, data, func() error {
		return g.m.Put(ctx, key, bytes.NewReader(data), size, ct)
	})
}

func (g *gated) Get(ctx context.Context, key string) (data []byte, err error) {
	err = g.do(ctx, "get", key, nil, func() error { data, err = g.m.Get(ctx, key); return err })
	return data, err
}

// List takes its snapshot as one step; fn then runs outside the gate
// (it may wait for the reads the walk starts from it).
func (g *gated) List(ctx context.Context, prefix string, fn func(store.Object) error) error {
	var objs []store.Object
	if err := g.do(ctx, "list", prefix, nil, func() error { objs = g.m.snapshot(prefix); return nil }); err != nil {
		return err
	}
	for _, o := range objs {
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

func (g *gated) Stat(ctx context.Context, key string) (o store.Object, err error) {
	err = g.do(ctx, "stat", key, nil, func() error { o, err = g.m.Stat(ctx, key); return err })
	return o, err
}

func (g *gated) Open(ctx context.Context, key string) (rc io.ReadCloser, err error) {
	err = g.do(ctx, "open", key, nil, func() error { rc, err = g.m.Open(ctx, key); return err })
	return rc, err
}

func (g *gated) Delete(ctx context.Context, key string) error {
	return g.do(ctx, "delete", key, nil, func() error { return g.m.Delete(ctx, key) })
}

func (g *gated) DeleteMany(ctx context.Context, keys []string) error {
	return g.do(ctx, "delete-many", strings.Join(keys, ","), nil, func() error { return g.m.DeleteMany(ctx, keys) })
}

func (g *gated) ListUploads(ctx context.Context, fn func(store.PendingUpload) error) error {
	return nil // none: every Put here is one request
}

func (g *gated) AbortUpload(ctx context.Context, up store.PendingUpload) error { return nil }

func (g *gated) GetTagged(ctx context.Context, key string) (data []byte, etag string, err error) {
	err = g.do(ctx, "get-tagged", key, nil, func() error { data, etag, err = g.m.GetTagged(ctx, key); return err })
	return data, etag, err
}

func (g *gated) PutIf(ctx context.Context, key string, data []byte, ct, etag string) (tag string, err error) {
	err = g.do(ctx, "put-if", key, data, func() error { tag, err = g.m.PutIf(ctx, key, data, ct, etag); return err })
	return tag, err
}

// jobKey carries the daemon job a request belongs to (through the
// uploader, which passes its context down to the store).
type jobKey struct{}

func withJob(ctx context.Context, job string) context.Context {
	return context.WithValue(ctx, jobKey{}, job)
}

func jobOf(ctx context.Context) string {
	j, _ := ctx.Value(jobKey{}).(string)
	return j
}
