// Command pushfloor measures the least work any pusher must do to put
// store paths into a zstd binary cache, in two parts timed apart, for the
// push rows of BenchmarkPush (NIXPUSH_BENCH_FLOOR=1) or by hand:
//
//	pushfloor pack [-stage nar|hash|all] [-jobs N] PATH...
//	pushfloor put -endpoint HOST:PORT -bucket B [-jobs N] [-minio-pid PID] [-single] PATH...
//	pushfloor stream -endpoint HOST:PORT -bucket B [-jobs N] [-minio-pid PID] PATH...
//
// pack reads each path and serialises its NAR (a), compresses it with zstd
// as nixpush does (b: level default, 1 MiB window, one stream encoding a
// block while the next fills) and hashes the NAR and the compressed file
// with SHA-256 (c), into nothing, -jobs paths at once (default: the number
// of cores). -stage nar stops after (a), hash after (a) and the NAR's hash.
//
// put packs the paths first, untimed, into memory, then times sending the
// compressed bytes to S3 as nixpush does (minio-go, no payload hash in the
// signature, 5 MiB parts of a multipart upload, a single PUT for what fits
// in one part), -jobs requests at once (default 2: nixpush sends two NARs
// at a time, a part of each). With -minio-pid it also reads that process's
// CPU time before and after. -single sends each file in one PUT, as nix
// copy does, whatever its size. The credentials come from AWS_ACCESS_KEY_ID
// and AWS_SECRET_ACCESS_KEY.
//
// stream does both in one pass, as a pusher that does nothing else would:
// each NAR is packed into 5 MiB parts, a part sent while the next is
// packed, -jobs NARs at once (default 2, as nixpush); a NAR of one part
// goes up in one PUT. No .narinfo, no signature, no listing, no queue:
// its wall time is the floor's, measured under the same load as the
// pushers beside it.
//
// Both print one JSON line: wall and CPU seconds of the timed part (CPU
// from getrusage, all threads of this process), the bytes, and MinIO's CPU
// seconds when asked.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nix-community/go-nix/pkg/nar"
)

// partSize is nixpush's part size (uploader/store_s3.go).
const partSize = 5 << 20

// result is what a run prints.
type result struct {
	Mode      string  `json:"mode"`
	Paths     int     `json:"paths"`
	NARBytes  int64   `json:"nar_bytes"`
	FileBytes int64   `json:"file_bytes"`
	WallS     float64 `json:"wall_s"`
	CPUS      float64 `json:"cpu_s"`
	MinIOCPUS float64 `json:"minio_cpu_s,omitempty"`
	Requests  int     `json:"requests,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var (
		res result
		err error
	)
	switch os.Args[1] {
	case "pack":
		res, err = runPack(os.Args[2:])
	case "put":
		res, err = runPut(os.Args[2:])
	case "stream":
		res, err = runStream(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pushfloor:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: pushfloor pack [-stage nar|hash|all] [-jobs N] PATH...\n"+
		"       pushfloor put -endpoint HOST:PORT -bucket B [-jobs N] [-minio-pid PID] [-single] PATH...\n"+
		"       pushfloor stream -endpoint HOST:PORT -bucket B [-jobs N] [-minio-pid PID] PATH...")
	os.Exit(2)
}

func runPack(args []string) (result, error) {
	fs := flag.NewFlagSet("pack", flag.ExitOnError)
	stage := fs.String("stage", "all", "nar: serialise only; hash: and hash the NAR; all: and compress and hash the file")
	jobs := fs.Int("jobs", runtime.GOMAXPROCS(0), "paths packed at once")
	fs.Parse(args)
	if *stage != "nar" && *stage != "hash" && *stage != "all" {
		return result{}, fmt.Errorf("-stage %q: want nar, hash or all", *stage)
	}
	paths := fs.Args()
	res := result{Mode: "pack-" + *stage, Paths: len(paths)}
	var mu sync.Mutex
	wall, cpu, err := timed(func() error {
		return each(paths, *jobs, func(p string) error {
			narN, fileN, err := pack(p, *stage, io.Discard)
			mu.Lock()
			res.NARBytes += narN
			res.FileBytes += fileN
			mu.Unlock()
			return err
		})
	})
	res.WallS, res.CPUS = wall.Seconds(), cpu.Seconds()
	return res, err
}

// pack writes the compressed NAR of path to w, hashing the NAR and the
// file on the way, as nixpush's uploader packs a large NAR.
func pack(path, stage string, w io.Writer) (narBytes, fileBytes int64, err error) {
	file := &counter{h: sha256.New()}
	var sink io.Writer = io.Discard
	var zw *zstd.Encoder
	if stage == "all" {
		zw, err = zstd.NewWriter(io.MultiWriter(file, w), zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithEncoderConcurrency(min(2, runtime.GOMAXPROCS(0))), zstd.WithWindowSize(1<<20))
		if err != nil {
			return 0, 0, err
		}
		sink = zw
	}
	narc := &counter{h: sha256.New()}
	var into io.Writer = narc
	if stage != "nar" {
		into = io.MultiWriter(narc, sink)
	} else {
		narc.h = nil
	}
	bw := bufio.NewWriterSize(into, 256<<10)
	if err := nar.DumpPath(bw, path); err != nil {
		return 0, 0, fmt.Errorf("pack %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return 0, 0, err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return 0, 0, err
		}
	}
	narc.sum()
	file.sum()
	return narc.n, file.n, nil
}

// counter is a byte count and, unless h is nil, a hash.
type counter struct {
	h hash.Hash
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	if c.h != nil {
		c.h.Write(p)
	}
	c.n += int64(len(p))
	return len(p), nil
}

func (c *counter) sum() []byte {
	if c.h == nil {
		return nil
	}
	return c.h.Sum(nil)
}

func runPut(args []string) (result, error) {
	fs := flag.NewFlagSet("put", flag.ExitOnError)
	endpoint := fs.String("endpoint", "", "S3 endpoint, HOST:PORT (plain http)")
	bucket := fs.String("bucket", "", "bucket")
	jobs := fs.Int("jobs", 2, "requests at once")
	minioPid := fs.Int("minio-pid", 0, "MinIO's process id, to read its CPU time")
	single := fs.Bool("single", false, "each file in one PUT, as nix copy sends it, rather than in parts")
	fs.Parse(args)
	if *endpoint == "" || *bucket == "" {
		usage()
	}
	paths := fs.Args()
	res := result{Mode: "put", Paths: len(paths)}
	part := partSize
	if *single {
		res.Mode, part = "put-single", 1<<40
	}
	files := make([][]byte, len(paths))
	for i, p := range paths {
		var buf bytes.Buffer
		n, _, err := pack(p, "all", &buf)
		if err != nil {
			return res, err
		}
		files[i] = buf.Bytes()
		res.NARBytes += n
		res.FileBytes += int64(buf.Len())
	}
	c, err := newClient(*endpoint)
	if err != nil {
		return res, err
	}
	runtime.GC()
	m0, err := procCPU(*minioPid)
	if err != nil {
		return res, err
	}
	wall, cpu, err := timed(func() error {
		res.Requests, err = putAll(context.Background(), c, *bucket, files, *jobs, part)
		return err
	})
	m1, merr := procCPU(*minioPid)
	res.WallS, res.CPUS, res.MinIOCPUS = wall.Seconds(), cpu.Seconds(), (m1 - m0).Seconds()
	if err == nil {
		err = merr
	}
	return res, err
}

func runStream(args []string) (result, error) {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	endpoint := fs.String("endpoint", "", "S3 endpoint, HOST:PORT (plain http)")
	bucket := fs.String("bucket", "", "bucket")
	jobs := fs.Int("jobs", 2, "NARs at once")
	minioPid := fs.Int("minio-pid", 0, "MinIO's process id, to read its CPU time")
	fs.Parse(args)
	if *endpoint == "" || *bucket == "" {
		usage()
	}
	paths := fs.Args()
	res := result{Mode: "stream", Paths: len(paths)}
	c, err := newClient(*endpoint)
	if err != nil {
		return res, err
	}
	m0, err := procCPU(*minioPid)
	if err != nil {
		return res, err
	}
	var mu sync.Mutex
	wall, cpu, err := timed(func() error {
		return eachUnit(len(paths), *jobs, func(i int) error {
			n, f, reqs, err := streamOne(context.Background(), c, *bucket, fmt.Sprintf("nar/%d.nar.zst", i), paths[i])
			mu.Lock()
			res.NARBytes, res.FileBytes, res.Requests = res.NARBytes+n, res.FileBytes+f, res.Requests+reqs
			mu.Unlock()
			return err
		})
	})
	m1, merr := procCPU(*minioPid)
	res.WallS, res.CPUS, res.MinIOCPUS = wall.Seconds(), cpu.Seconds(), (m1 - m0).Seconds()
	if err == nil {
		err = merr
	}
	return res, err
}

// streamOne packs path into a pipe and sends it under key as it comes: one
// PUT if it fits in a part, else a multipart upload whose next part is
// packed while the previous one is sent.
func streamOne(ctx context.Context, c *minio.Client, bucket, key, path string) (narBytes, fileBytes int64, requests int, err error) {
	pr, pw := io.Pipe()
	packed := make(chan error, 1)
	var narN, fileN int64
	go func() {
		var err error
		narN, fileN, err = pack(path, "all", pw)
		pw.CloseWithError(err)
		packed <- err
	}()
	defer func() {
		pr.CloseWithError(io.ErrClosedPipe)
		perr := <-packed
		narBytes, fileBytes = narN, fileN
		if err == nil {
			err = perr
		}
	}()
	opts := minio.PutObjectOptions{ContentType: "application/x-nix-nar", DisableContentSha256: true}
	buf := make([]byte, partSize)
	n, rerr := io.ReadFull(pr, buf)
	if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
		opts.DisableMultipart = true
		_, err = c.PutObject(ctx, bucket, key, bytes.NewReader(buf[:n]), int64(n), opts)
		return narBytes, fileBytes, 1, err
	}
	if rerr != nil {
		return narBytes, fileBytes, 0, rerr
	}
	core := minio.Core{Client: c}
	id, err := core.NewMultipartUpload(ctx, bucket, key, opts)
	if err != nil {
		return narBytes, fileBytes, 1, err
	}
	requests = 1
	var done []minio.CompletePart
	next := make([]byte, partSize)
	for num := 1; ; num++ {
		sent := make(chan error, 1)
		go func(num int, data []byte) {
			p, err := core.PutObjectPart(ctx, bucket, key, id, num, bytes.NewReader(data), int64(len(data)),
				minio.PutObjectPartOptions{DisableContentSha256: true})
			done = append(done, minio.CompletePart{PartNumber: num, ETag: p.ETag})
			sent <- err
		}(num, buf[:n])
		last := rerr != nil
		var m int
		if !last {
			m, rerr = io.ReadFull(pr, next)
		}
		if err := <-sent; err != nil {
			return narBytes, fileBytes, requests, err
		}
		requests++
		if rerr != nil && rerr != io.ErrUnexpectedEOF && rerr != io.EOF {
			return narBytes, fileBytes, requests, rerr // packing failed
		}
		if last || m == 0 {
			break
		}
		buf, next, n = next, buf, m
	}
	_, err = core.CompleteMultipartUpload(ctx, bucket, key, id, done, minio.PutObjectOptions{ContentType: "application/x-nix-nar"})
	return narBytes, fileBytes, requests + 1, err
}

// putAll sends each file as nar/<i>.nar.zst, jobs requests at once: a
// multipart upload of partSize parts, or one PUT when it fits in a part.
func putAll(ctx context.Context, c *minio.Client, bucket string, files [][]byte, jobs, partSize int) (requests int, err error) {
	core := minio.Core{Client: c}
	type part struct {
		obj, num int
		data     []byte
	}
	ids := make([]string, len(files))
	etags := make([][]minio.CompletePart, len(files))
	var units []part
	for i, f := range files {
		key := fmt.Sprintf("nar/%d.nar.zst", i)
		if len(f) <= partSize {
			units = append(units, part{obj: i, data: f})
			continue
		}
		if ids[i], err = core.NewMultipartUpload(ctx, bucket, key, minio.PutObjectOptions{
			ContentType: "application/x-nix-nar", DisableContentSha256: true}); err != nil {
			return requests, err
		}
		requests++
		n := (len(f) + partSize - 1) / partSize
		etags[i] = make([]minio.CompletePart, n)
		for j := range n {
			units = append(units, part{obj: i, num: j + 1, data: f[j*partSize : min(len(f), (j+1)*partSize)]})
		}
	}
	err = eachUnit(len(units), jobs, func(k int) error {
		u := units[k]
		key := fmt.Sprintf("nar/%d.nar.zst", u.obj)
		if u.num == 0 {
			_, err := c.PutObject(ctx, bucket, key, bytes.NewReader(u.data), int64(len(u.data)),
				minio.PutObjectOptions{ContentType: "application/x-nix-nar", DisableContentSha256: true, DisableMultipart: true})
			return err
		}
		p, err := core.PutObjectPart(ctx, bucket, key, ids[u.obj], u.num, bytes.NewReader(u.data), int64(len(u.data)),
			minio.PutObjectPartOptions{DisableContentSha256: true})
		etags[u.obj][u.num-1] = minio.CompletePart{PartNumber: u.num, ETag: p.ETag}
		return err
	})
	requests += len(units)
	if err != nil {
		return requests, err
	}
	for i, id := range ids {
		if id == "" {
			continue
		}
		if _, err := core.CompleteMultipartUpload(ctx, bucket, fmt.Sprintf("nar/%d.nar.zst", i), id, etags[i],
			minio.PutObjectOptions{ContentType: "application/x-nix-nar"}); err != nil {
			return requests, err
		}
		requests++
	}
	return requests, nil
}

// newClient is a client of the S3 endpoint (plain http) with the
// credentials of the environment.
func newClient(endpoint string) (*minio.Client, error) {
	return minio.New(endpoint, &minio.Options{Region: "us-east-1",
		Creds: credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), "")})
}

// each runs fn on every path, jobs at once, and returns the first error.
func each(paths []string, jobs int, fn func(string) error) error {
	return eachUnit(len(paths), jobs, func(i int) error { return fn(paths[i]) })
}

func eachUnit(n, jobs int, fn func(int) error) error {
	next := make(chan int)
	errs := make(chan error, max(1, jobs))
	var wg sync.WaitGroup
	for range max(1, jobs) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var first error
			for i := range next {
				if err := fn(i); err != nil && first == nil {
					first = err
				}
			}
			errs <- first
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// timed runs fn and returns its wall time and this process's CPU time
// (user and system, every thread) meanwhile.
func timed(fn func() error) (wall, cpu time.Duration, err error) {
	c0 := selfCPU()
	start := time.Now()
	err = fn()
	return time.Since(start), selfCPU() - c0, err
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the user and system time of process pid from
// /proc/PID/stat (0 for pid 0).
func procCPU(pid int) (time.Duration, error) {
	if pid == 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}
