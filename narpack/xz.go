package narpack

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strconv"
	"sync"

	"github.com/ulikunitz/xz"
)

// xz compression goes through the xz tool (liblzma) when it is on PATH, in
// a process of its own per NAR, rather than through a Go encoder:
//   - speed: liblzma at preset 6 (what Nix's own xz compression uses)
//     packs several MB/s per core where the pure-Go ulikunitz/xz packs
//     about 1 MB/s, and `xz --threads` splits a large NAR into blocks
//     compressed on every core, which Nix (liblzma or libarchive) reads
//     as any .xz; small NARs use one thread each, and the uploader packs
//     several at once;
//   - no cgo: the daemon stays a static Go binary, where a liblzma
//     binding would need a C toolchain and the library at build time;
//   - memory: the encoder's ~100 MiB (preset 6) lives in the xz process
//     and is returned when it exits, outside the daemon's heap and its
//     soft memory limit;
//   - the cost: a process start per NAR (~1 ms, small beside compressing
//     even a small NAR with xz) and a pipe each way.
// Without xz on PATH the pure-Go encoder is used, and the daemon says so
// at start.

// xzTool is the path of the xz tool, or "" when it is not on PATH.
var xzTool = sync.OnceValue(func() string {
	p, err := exec.LookPath("xz")
	if err != nil {
		return ""
	}
	return p
})

// XZTool tells which xz encoder the uploader uses: the xz tool's path, or
// "" for the pure-Go one.
func XZTool() string { return xzTool() }

// xzPreset is the xz preset, Nix's own (lzma_easy_encoder level 6).
const xzPreset = "-6"

// xzPresetDict is preset 6's dictionary size.
const xzPresetDict = 8 << 20

// xzDictFor is the dictionary for a NAR of narSize bytes: the smallest
// power of two that holds it (at least 64 KiB), at most the preset's.
func xzDictFor(narSize uint64) uint64 {
	d := uint64(64 << 10)
	for d < narSize && d < xzPresetDict {
		d <<= 1
	}
	return d
}

// xzThreadMin is the NAR size from which one NAR is compressed on several
// threads, in blocks of narSize/cores, at least xzBlockMin each.
const (
	xzThreadMin = 8 << 20
	xzBlockMin  = 4 << 20
)

func newXZWriter(w io.Writer, narSize uint64) (io.WriteCloser, error) {
	tool := xzTool()
	if tool == "" {
		return xz.NewWriter(w)
	}
	args := []string{"--compress", "--stdout", "--format=xz", "--check=crc64", xzPreset}
	if dict := xzDictFor(narSize); dict < xzPresetDict {
		// The preset's 8 MiB dictionary is no use on a smaller NAR, and its
		// match finder's tables cost a small NAR most of its time (a
		// 258 KiB NAR: 54 ms and 9,087 page faults, against 19 ms and
		// 1,407 with a 512 KiB dictionary; the same output).
		args = append(args, "--lzma2=preset=6,dict="+strconv.FormatUint(dict, 10))
	}
	if cores := runtime.GOMAXPROCS(0); narSize >= xzThreadMin && cores > 1 {
		block := max(uint64(xzBlockMin), narSize/uint64(cores)+1)
		args = append(args, "--threads="+strconv.Itoa(cores), "--block-size="+strconv.FormatUint(block, 10))
	} else {
		args = append(args, "--threads=1")
	}
	cmd := exec.Command(tool, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	x := &xzProc{cmd: cmd, stdin: stdin, copied: make(chan error, 1)}
	cmd.Stderr = &x.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", tool, err)
	}
	go func() {
		_, err := io.Copy(w, stdout)
		if err != nil {
			// w refused: stop xz, which may be blocked writing to us.
			cmd.Process.Kill()
			io.Copy(io.Discard, stdout)
		}
		x.copied <- err
	}()
	return x, nil
}

// xzProc is an xz process compressing what is written to it into w.
type xzProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	copied chan error
	closed bool
}

func (x *xzProc) Write(p []byte) (int, error) {
	n, err := x.stdin.Write(p)
	if err != nil {
		return n, x.fail(err)
	}
	return n, nil
}

// fail ends the process after a failed write and says why.
func (x *xzProc) fail(err error) error {
	x.cmd.Process.Kill()
	x.finish()
	return fmt.Errorf("xz: %w", err)
}

// finish waits for the output to be copied and the process to exit.
func (x *xzProc) finish() error {
	if x.closed {
		return errors.New("xz: closed")
	}
	x.closed = true
	x.stdin.Close()
	cerr := <-x.copied
	werr := x.cmd.Wait()
	if cerr != nil {
		return cerr
	}
	if werr != nil {
		return fmt.Errorf("%w: %s", werr, bytes.TrimSpace(x.stderr.Bytes()))
	}
	return nil
}

// Close flushes the compressed stream into w; it does not close w.
func (x *xzProc) Close() error {
	if err := x.finish(); err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	return nil
}
