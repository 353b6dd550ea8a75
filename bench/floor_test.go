package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The floor of a push (NIXPUSH_BENCH_FLOOR=1): the least work any pusher
// must do, measured beside nix copy and nixpush in the same rounds by
// bench/pushfloor. Its sides: the NAR serialised alone (a); serialised
// and hashed (a, and the NAR's SHA-256); packed (a, zstd as nixpush
// compresses, the SHA-256 of the NAR and of the file), all into nothing,
// on every core; and the compressed bytes, packed beforehand, sent to
// MinIO as nixpush sends them (5 MiB parts), and in one PUT each as nix
// copy sends them, MinIO's CPU time read meanwhile; and both in one pass,
// two NARs at a time, a part sent while the next is packed: a pusher that
// does nothing else (no .narinfo, signature, listing or queue), timed
// under the same load as nix copy and nixpush.
var floorModes = []struct{ side, mode string }{
	{"floor NAR", "nar"},
	{"floor NAR+hash", "hash"},
	{"floor pack", "all"},
	{"floor put", "put"},
	{"floor put single", "put-single"},
	{"floor stream", "stream"},
}

// floorSides are the floor's sides, when NIXPUSH_BENCH_FLOOR asks for them
// and the compression is zstd (pushfloor packs as nixpush's zstd).
func floorSides(b *testing.B, compression string) []*pushSide {
	if os.Getenv("NIXPUSH_BENCH_FLOOR") == "" || compression != "zstd" {
		return nil
	}
	pushFloorBin(b)
	var sides []*pushSide
	for _, m := range floorModes {
		sides = append(sides, &pushSide{name: m.side, floor: m.mode})
	}
	return sides
}

var (
	pushFloorOnce sync.Once
	pushFloorPath string
	pushFloorErr  error
)

// pushFloorBin builds bench/pushfloor, once, beside nixpush's binaries.
func pushFloorBin(b *testing.B) string {
	b.Helper()
	pushFloorOnce.Do(func() {
		pushFloorPath = filepath.Join(binDir, "pushfloor")
		out, err := exec.Command("go", "build", "-o", pushFloorPath, "./pushfloor").CombinedOutput()
		if err != nil {
			pushFloorErr = fmt.Errorf("build pushfloor: %v\n%s", err, out)
		}
	})
	if pushFloorErr != nil {
		b.Fatal(pushFloorErr)
	}
	return pushFloorPath
}

// floorResult is what pushfloor prints.
type floorResult struct {
	FileBytes int64   `json:"file_bytes"`
	WallS     float64 `json:"wall_s"`
	CPUS      float64 `json:"cpu_s"`
	MinIOCPUS float64 `json:"minio_cpu_s"`
}

// floorPush runs one of the floor's sides on the closure: pack into
// nothing, or put (to bucket, fresh) what it packed beforehand.
func (pr *pushRun) floorPush(s *pushSide, bucket string) {
	r, b := pr.r, pr.r.b
	args := []string{"pack", "-stage", s.floor}
	put := strings.HasPrefix(s.floor, "put") || s.floor == "stream"
	if put {
		r.minio.MakeBucket(b, bucket, false)
		args = []string{"put", "-single=" + strconv.FormatBool(s.floor == "put-single")}
		if s.floor == "stream" {
			args = []string{"stream"}
		}
		args = append(args, "-endpoint", r.minio.Endpoint, "-bucket", bucket, "-minio-pid", strconv.Itoa(r.minio.Pid()))
	}
	r.settle()
	m0, _ := r.minio.CPUTime()
	cmd := exec.Command(pushFloorBin(b), append(args, pr.closure...)...)
	cmd.Env = append(os.Environ(), r.minio.CredentialsEnv()...)
	out, err := cmd.Output()
	m1, _ := r.minio.CPUTime()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		b.Fatalf("pushfloor %s: %v\n%s%s", s.floor, err, out, stderr)
	}
	var res floorResult
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("pushfloor %s: %v\n%s", s.floor, err, out)
	}
	minioCPU := m1 - m0
	if put {
		minioCPU = seconds(res.MinIOCPUS) // the upload alone, not the packing before it
		r.emptyBucket(bucket)
	}
	s.took = append(s.took, seconds(res.WallS))
	s.cpu = append(s.cpu, seconds(res.CPUS))
	s.minioCPU = append(s.minioCPU, minioCPU)
	s.fileBytes = res.FileBytes
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// logFloor logs the floor's sides and what they add up to: the CPU time of
// packing, of sending and of MinIO receiving; the floor's wall time on the
// machine's cores, that CPU spread over every core or the longest part
// that cannot be, whichever is larger; and its ratio to nix copy's time.
// The part that cannot be spread: a NAR is one stream, read and hashed on
// one core while it is compressed and the file hashed on another, so
// packing the largest NAR takes at least the larger of those two. Both
// are taken from CPU times, which the machine's other load stretches less
// than it stretches wall times. Last, the CPU of each way of pushing,
// MinIO's included, against the floor's.
func logFloor(b *testing.B, sides []*pushSide, nixCopy time.Duration, largest float64) {
	med := map[string]*pushSide{}
	for _, s := range sides {
		if s.floor != "" {
			med[s.floor] = s
		}
	}
	hash, pack, put := med["hash"], med["all"], med["put"]
	if hash == nil || pack == nil || put == nil {
		return
	}
	for _, m := range floorModes {
		s := med[m.mode]
		if s == nil {
			continue
		}
		logOut(b, "  %-28s %.2f s %v (%.2f–%.2f); CPU (median): its own %.2f s, MinIO %.2f s", s.name, percentile(s.took, 0.5).Seconds(),
			roundTo(s.took), percentile(s.took, 0).Seconds(), percentile(s.took, 1).Seconds(),
			percentile(s.cpu, 0.5).Seconds(), percentile(s.minioCPU, 0.5).Seconds())
	}
	c := func(s *pushSide) time.Duration { return percentile(s.cpu, 0.5) }
	// The floor sends as cheaply as it can: in parts or in one PUT each.
	if single := med["put-single"]; single != nil &&
		c(single)+percentile(single.minioCPU, 0.5) < c(put)+percentile(put.minioCPU, 0.5) {
		put = single
	}
	cpu := c(pack) + c(put) + percentile(put.minioCPU, 0.5)
	cores := runtime.NumCPU()
	serial := time.Duration(largest * float64(max(c(hash), c(pack)-c(hash))))
	floor := max(cpu/time.Duration(cores), serial)
	b.ReportMetric(floor.Seconds(), "floor-s")
	b.ReportMetric(floor.Seconds()/nixCopy.Seconds(), "floor-ratio")
	logOut(b, "  floor: %.2f s of CPU (pack %.2f + send %.2f + MinIO %.2f, as %s) on %d cores: %.2f s (the largest NAR's stream alone: %.2f s); ratio to nix copy %.2f",
		cpu.Seconds(), c(pack).Seconds(), c(put).Seconds(), percentile(put.minioCPU, 0.5).Seconds(), put.name,
		cores, floor.Seconds(), serial.Seconds(), floor.Seconds()/nixCopy.Seconds())
	if st := med["stream"]; st != nil {
		logOut(b, "  floor stream / nix copy, wall times in the same rounds: %.2f", percentile(st.took, 0.5).Seconds()/nixCopy.Seconds())
	}
	for _, s := range sides {
		if s.floor == "" {
			total := c(s) + percentile(s.minioCPU, 0.5)
			logOut(b, "  CPU of %s with MinIO's: %.2f s, %.2f× the floor's", s.name, total.Seconds(), total.Seconds()/cpu.Seconds())
		}
	}
}

// largestShare is the largest NAR size in the output of nix path-info
// --size (a path and its NAR size per line) over the closure's total.
func largestShare(out string, total int64) float64 {
	var largest int64
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				largest = max(largest, n)
			}
		}
	}
	return float64(largest) / float64(total)
}

// logOut prints a line of a benchmark's log to stdout, as it goes:
// testing keeps only the first 10 lines a benchmark logs.
func logOut(b *testing.B, format string, args ...any) {
	fmt.Printf("    %s: %s\n", b.Name(), fmt.Sprintf(format, args...))
}
