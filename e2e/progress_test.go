package e2e

import (
	"bytes"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpush/nixpush/internal/testenv"
)

var (
	progressRE = regexp.MustCompile(`pushing: (\d+)/(\d+) paths, [\d.]+ (?:[KMG]i)?B/[\d.]+ (?:[KMG]i)?B, \d+ cached`)
	summaryRE  = regexp.MustCompile(`(?m)^pushed (\d+) paths \([\d.]+ (?:[KMG]i)?B NAR\) in [^,]+, (\d+) already in the cache; nothing queued or failed\r?$`)
)

// TestPushProgress drives nixpush push --wait on a pseudo-terminal: live
// progress lines with path and byte counts, then a summary counting the
// closure's paths. Off a terminal the summary comes alone.
func TestPushProgress(t *testing.T) {
	// MinIO behind a throttling proxy, so that the push lasts long enough
	// for progress lines mid-way on any machine.
	f := newFixture(t, "nixpush-e2e-progress-1", onPrivateBucket("progress"), throughProxy(256<<10), daemonArgs("--jobs", "2"))
	nx, p, d := f.nx, f.p, f.d

	out := nx.Build(t, testenv.DAG(seed(), 12, 512, true))
	closure := closureOf(t, nx, out[0])
	control, term := testenv.PTY(t)
	cmd := testenv.Command(t, d.Bin(), "push", "--wait", out[0])
	cmd.Env = append(cmd.Environ(), "NIXPUSH_SOCKET="+d.Socket)
	cmd.Stdout, cmd.Stderr = term, term
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	term.Close() // the child holds it; reads end when it exits
	var tty bytes.Buffer
	read := make(chan error, 1)
	go func() { _, err := io.Copy(&tty, control); read <- err }()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("push --wait on a terminal: %v\n%q", err, tty.String())
	}
	select {
	case <-read: // EIO once the terminal's last holder closed it
	case <-time.After(30 * time.Second):
		t.Fatalf("terminal output did not end: %q", tty.String())
	}
	text := tty.String()
	t.Logf("terminal:\n%s", strings.ReplaceAll(text, "\r\033[K", "\n  | "))
	lines := progressRE.FindAllStringSubmatch(text, -1)
	if len(lines) == 0 {
		t.Fatalf("no progress line with path and byte counts: %q", text)
	}
	last := lines[len(lines)-1]
	if last[1] != last[2] || last[2] != strconv.Itoa(len(closure)) {
		t.Errorf("last progress line %q; want %d/%d paths", last[0], len(closure), len(closure))
	}
	var midway []string
	for _, l := range lines {
		if done, _ := strconv.Atoi(l[1]); done > 0 && done < len(closure) && l[2] == strconv.Itoa(len(closure)) {
			midway = append(midway, l[0])
		}
	}
	if len(midway) == 0 {
		t.Errorf("no live progress line mid-way through the %d paths: %q", len(closure), text)
	}
	sum := summaryRE.FindStringSubmatch(text)
	if sum == nil || sum[1] != strconv.Itoa(len(closure)) {
		t.Fatalf("no summary counting the closure's %d paths: %q", len(closure), text)
	}
	if !strings.HasSuffix(strings.TrimRight(text, "\r\n"), strings.TrimRight(sum[0], "\r")) {
		t.Errorf("the summary is not the last line: %q", text)
	}

	// Off a terminal: the summary alone after the queued line.
	p.SetRate(0)
	out2 := nx.Build(t, testenv.DAG(seed(), 6, 64, true))
	o, err := d.CLI("push", "--wait", out2[0])
	if err != nil {
		t.Fatalf("push --wait: %v\n%s", err, o)
	}
	got := strings.Split(strings.TrimSpace(o), "\n")
	if len(got) != 2 || !strings.HasPrefix(got[0], "queued 1 path(s)") || strings.ContainsAny(o, "\r\033") ||
		summaryRE.FindStringSubmatch(got[1]) == nil || summaryRE.FindStringSubmatch(got[1])[1] != strconv.Itoa(len(closureOf(t, nx, out2[0]))) {
		t.Fatalf("push --wait off a terminal printed %q; want the queued line and the summary counting the closure", o)
	}
	t.Logf("off a terminal:\n%s", o)
}
