package nix

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/wire"
)

// The serve protocol of `nix-store --serve`, the one ssh:// stores speak:
// stable from Nix 2.0 to current and in Lix. Version 2.4 added the NAR
// hash, content address and signatures to path infos.
const (
	serveMagic1      = 0x390c9deb
	serveMagic2      = 0x5452eecb
	serveVersion     = 0x204
	cmdQueryValid    = 1
	cmdQueryInfos    = 2
	cmdQueryClosure  = 7
	maxServeString   = 64 << 10
	maxServeListSize = 1 << 20
)

// Serve reads path info through one long-lived `nix-store --serve`
// process: a closure query costs two round trips on a pipe instead of
// starting Nix (about 50 ms of CPU per start, which competes with builds
// when the hook hands over a path after each one). It works the same as
// root on a single-user store and as any user behind nix-daemon.
//
// The process starts on first use and again after it fails; Serve is safe
// for concurrent use (queries take turns on the pipe). nix-store holds
// Nix's big lock (db/big-lock) shared for as long as it runs, and what
// needs it exclusively (Nix 2.8 to 2.25's first use of ca-derivations, a
// database schema upgrade after Nix is upgraded) waits for it: so the
// process stops after Idle without a query, and, while queries keep
// coming, at the end of the first query after it has run for MaxAge (the
// next query starts a fresh one; a Nix command waiting for the lock takes
// it in between). Nothing holds it across a wait: the lock is held by an
// idle daemon for at most Idle, by a busy one for at most MaxAge and a
// query.
type Serve struct {
	Client // which nix-store, store directory and environment
	// Idle is how long the process stays without a query (0: ServeIdle;
	// negative: for ever, as before Nix's lock was known to matter:
	// tests use it to show what the stop is for).
	Idle time.Duration
	// MaxAge is how long one process serves queries that keep coming
	// (0: ServeMaxAge; negative: for ever).
	MaxAge time.Duration

	mu      sync.Mutex
	lastUse time.Time
	started time.Time
	idle    *time.Timer
	cmd     *exec.Cmd
	in      *bufio.Writer
	inPipe  io.WriteCloser
	out     *bufio.Reader
	stderr  *tail
}

// ServeIdle is how long a Serve keeps nix-store without a query: long
// enough for the hand-offs of a run of builds to share one process, short
// enough that a Nix command that needs the store alone waits seconds.
const ServeIdle = 2 * time.Second

// ServeMaxAge is how long one nix-store serves queries that never pause
// for ServeIdle. A restart costs one Nix start (80 to 100 ms of CPU with
// Nix 2.8 on this project's 2-core test machine, under load), so about 3%
// of a core while queries never pause, beside the builds that cause them.
const ServeMaxAge = 3 * time.Second

// NewServe returns a Serve running c's nix-store.
func NewServe(c Client) *Serve { return &Serve{Client: c} }

// used notes a query (or a start) and arms the idle stop. The caller
// holds s.mu.
func (s *Serve) used() {
	s.lastUse = time.Now()
	d := s.idleFor()
	if d < 0 {
		return
	}
	if s.idle == nil {
		s.idle = time.AfterFunc(d, s.idleStop)
	} else {
		s.idle.Reset(d)
	}
}

func (s *Serve) idleFor() time.Duration {
	if s.Idle != 0 {
		return s.Idle
	}
	return ServeIdle
}

// tooOld says the process has served its MaxAge. The caller holds s.mu.
func (s *Serve) tooOld() bool {
	age := s.MaxAge
	if age == 0 {
		age = ServeMaxAge
	}
	return s.cmd != nil && age > 0 && time.Since(s.started) >= age
}

// idleStop stops nix-store unless a query came since the timer was set.
func (s *Serve) idleStop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if left := s.idleFor() - time.Since(s.lastUse); left > 0 {
		s.idle.Reset(left)
		return
	}
	s.stop()
}

// Running reports whether the nix-store process is up.
func (s *Serve) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Start starts the nix-store process now rather than at the first query,
// so that the first push does not wait for Nix to start.
func (s *Serve) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	s.used()
	return s.start(ctx)
}

// Close stops the nix-store process.
func (s *Serve) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop()
	return nil
}

// Query returns the path info of paths (not their closure), in no set
// order. A path that is not valid is an ErrInvalidPath error.
func (s *Serve) Query(ctx context.Context, paths []string) ([]PathInfo, error) {
	return s.query(ctx, paths, false)
}

// QueryClosure returns the path info of every path in the closure of paths.
func (s *Serve) QueryClosure(ctx context.Context, paths []string) ([]PathInfo, error) {
	return s.query(ctx, paths, true)
}

func (s *Serve) query(ctx context.Context, paths []string, closure bool) ([]PathInfo, error) {
	for _, p := range paths {
		if _, err := StorePath(s.storeDir(), p); err != nil {
			// nix-store --serve exits on a path outside the store.
			return nil, fmt.Errorf("%w: %v", ErrInvalidPath, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var infos []PathInfo
	err := s.roundTrips(ctx, func() error {
		valid, err := s.queryValid(paths)
		if err != nil {
			return err
		}
		if len(valid) < len(paths) {
			var missing []string
			for _, p := range paths {
				if !slices.Contains(valid, p) {
					missing = append(missing, p)
				}
			}
			return fmt.Errorf("%w: %s", ErrInvalidPath, strings.Join(missing, ", "))
		}
		if closure {
			if paths, err = s.queryClosure(paths); err != nil {
				return err
			}
		}
		infos, err = s.queryInfos(paths)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(infos) != len(paths) {
		// Garbage-collected between the queries.
		return nil, fmt.Errorf("%w: a path in the closure of %s vanished while it was read", ErrInvalidPath, strings.Join(paths, ", "))
	}
	return infos, nil
}

// roundTrips runs fn against a live process; on any failure of the pipe the
// process is stopped, so the next query starts a fresh one. So is a process
// past its MaxAge, once fn is done.
func (s *Serve) roundTrips(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.cmd == nil {
		if err := s.start(ctx); err != nil {
			return err
		}
	}
	stop := s.killOnDone(ctx)
	err := fn()
	stop()
	s.used()
	if s.tooOld() {
		defer s.stop()
	}
	if err != nil && !errors.Is(err, ErrInvalidPath) {
		msg := s.stderr.String()
		s.stop()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if msg != "" {
			return fmt.Errorf("nix-store --serve: %v: %s", err, msg)
		}
		return fmt.Errorf("nix-store --serve: %w", err)
	}
	return err
}

// killOnDone kills the process if ctx is done before the returned func is
// called: that unblocks a read of its pipe (nix-store waits for Nix's big
// lock before its first answer, as long as a command holds it alone).
func (s *Serve) killOnDone(ctx context.Context) func() {
	done := make(chan struct{})
	cmd := s.cmd
	go func() {
		select {
		case <-ctx.Done():
			cmd.Process.Kill()
		case <-done:
		}
	}()
	return func() { close(done) }
}

func (s *Serve) start(ctx context.Context) error {
	cmd := exec.Command(s.bin("nix-store"), "--serve")
	cmd.Env = append(os.Environ(), s.Env...)
	s.stderr = &tail{}
	cmd.Stderr = s.stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nix-store --serve: %w (is Nix installed and on PATH?)", err)
	}
	s.cmd, s.inPipe, s.in, s.out = cmd, in, bufio.NewWriter(in), bufio.NewReaderSize(out, 64<<10)
	stop := s.killOnDone(ctx)
	err = s.handshake()
	stop()
	s.started = time.Now() // its age counts from its first answer: a slow start is not serving
	if err != nil {
		msg := s.stderr.String()
		s.stop()
		if ctx.Err() != nil {
			return fmt.Errorf("nix-store --serve handshake: %w (%s)", ctx.Err(), msg)
		}
		return fmt.Errorf("nix-store --serve handshake: %v %s", err, msg)
	}
	return nil
}

func (s *Serve) stop() {
	if s.cmd == nil {
		return
	}
	s.inPipe.Close() // nix-store exits at the end of its input
	exited := make(chan struct{})
	go func() { s.cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(2 * time.Second):
		s.cmd.Process.Kill()
		<-exited
	}
	s.cmd = nil
}

func (s *Serve) handshake() error {
	if err := s.writeUints(serveMagic1, serveVersion); err != nil {
		return err
	}
	if err := s.in.Flush(); err != nil {
		return err
	}
	magic, err := wire.ReadUint64(s.out)
	if err != nil {
		return err
	}
	if magic != serveMagic2 {
		return fmt.Errorf("protocol mismatch (magic %#x)", magic)
	}
	version, err := wire.ReadUint64(s.out)
	if err != nil {
		return err
	}
	if version>>8 != 2 || version&0xff < 4 {
		return fmt.Errorf("nix-store speaks serve protocol %d.%d; nixpush needs 2.4 or later (Nix 2.4+)", version>>8, version&0xff)
	}
	return nil
}

func (s *Serve) queryValid(paths []string) ([]string, error) {
	if err := s.writeUints(cmdQueryValid, 0, 0); err != nil { // no lock, no substitution
		return nil, err
	}
	if err := s.writeStrings(paths); err != nil {
		return nil, err
	}
	return s.readStrings()
}

func (s *Serve) queryClosure(paths []string) ([]string, error) {
	if err := s.writeUints(cmdQueryClosure, 0); err != nil { // without outputs of derivations
		return nil, err
	}
	if err := s.writeStrings(paths); err != nil {
		return nil, err
	}
	return s.readStrings()
}

func (s *Serve) queryInfos(paths []string) ([]PathInfo, error) {
	if err := s.writeUints(cmdQueryInfos); err != nil {
		return nil, err
	}
	if err := s.writeStrings(paths); err != nil {
		return nil, err
	}
	var infos []PathInfo
	for {
		path, err := s.readString()
		if err != nil {
			return nil, err
		}
		if path == "" {
			return infos, nil
		}
		info, err := s.readInfo(path)
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
}

func (s *Serve) readInfo(path string) (PathInfo, error) {
	info := PathInfo{}
	var err error
	if info.Path, err = StorePath(s.storeDir(), path); err != nil {
		return info, err
	}
	if info.Deriver, err = s.readString(); err != nil {
		return info, err
	}
	if info.References, err = s.readStrings(); err != nil {
		return info, err
	}
	slices.Sort(info.References)
	if _, err = wire.ReadUint64(s.out); err != nil { // download size
		return info, err
	}
	if info.NarSize, err = wire.ReadUint64(s.out); err != nil {
		return info, err
	}
	narHash, err := s.readString()
	if err != nil {
		return info, err
	}
	algo := nixhash.SHA256
	h, err := nixhash.ParseAny(narHash, &algo)
	if err != nil {
		return info, fmt.Errorf("path info of %s: narHash %q: %w", path, narHash, err)
	}
	info.NarHash = h.Hash
	if info.CA, err = s.readString(); err != nil {
		return info, err
	}
	if info.Sigs, err = s.readStrings(); err != nil {
		return info, err
	}
	for _, r := range info.References {
		if _, err := StorePath(s.storeDir(), r); err != nil {
			return info, fmt.Errorf("path info of %s: reference: %w", path, err)
		}
	}
	return info, nil
}

func (s *Serve) writeUints(ns ...uint64) error {
	for _, n := range ns {
		if err := wire.WriteUint64(s.in, n); err != nil {
			return err
		}
	}
	return nil
}

func (s *Serve) writeStrings(ss []string) error {
	if err := wire.WriteUint64(s.in, uint64(len(ss))); err != nil {
		return err
	}
	for _, str := range ss {
		if err := wire.WriteString(s.in, str); err != nil {
			return err
		}
	}
	return s.in.Flush()
}

func (s *Serve) readString() (string, error) { return wire.ReadString(s.out, maxServeString) }

func (s *Serve) readStrings() ([]string, error) {
	n, err := wire.ReadUint64(s.out)
	if err != nil {
		return nil, err
	}
	if n > maxServeListSize {
		return nil, fmt.Errorf("list of %d strings: over the limit of %d", n, maxServeListSize)
	}
	var out []string
	for range n {
		str, err := s.readString()
		if err != nil {
			return nil, err
		}
		out = append(out, str)
	}
	return out, nil
}

// tail keeps the last few KiB a process wrote, for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 4096 {
		t.buf = t.buf[len(t.buf)-4096:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}
