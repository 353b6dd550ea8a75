package version

import (
	"runtime"
	"strings"
	_ "unsafe" // go:linkname
)

// Set with -ldflags "-X github.com/nixpush/nixpush/internal/version.version=V
// -X github.com/nixpush/nixpush/internal/version.commit=C" (package.nix does).
var (
	version string
	commit  string
)

// modinfo is the build info text the Go linker embeds; the runtime pushes
// it to runtime/debug under this name, where ReadBuildInfo reads it too.
//
//go:linkname modinfo runtime/debug.modinfo
func modinfo() string

// Info is what the running binary was built from.
type Info struct {
	Version string `json:"version"`          // "0.1.0", or "devel" for a plain go build
	Commit  string `json:"commit,omitempty"` // VCS revision, "-dirty" when modified
	Go      string `json:"go"`               // the Go toolchain, e.g. go1.26.8
}

// Get returns the running binary's version.
func Get() Info {
	info := Info{Version: version, Commit: commit, Go: runtime.Version()}
	var rev string
	var dirty bool
	for _, line := range strings.Split(modinfo(), "\n") {
		fields := strings.Split(line, "\t")
		switch {
		case len(fields) >= 3 && fields[0] == "mod" && info.Version == "":
			info.Version = fields[2]
		case len(fields) == 2 && fields[0] == "build":
			k, v, _ := strings.Cut(fields[1], "=")
			switch k {
			case "vcs.revision":
				rev = v
			case "vcs.modified":
				dirty = v == "true"
			}
		}
	}
	if info.Version == "" || info.Version == "(devel)" {
		info.Version = "devel"
	}
	info.Version = strings.TrimPrefix(info.Version, "v")
	if info.Commit == "" && rev != "" {
		info.Commit = rev
		if dirty {
			info.Commit += "-dirty"
		}
	}
	return info
}

// String is the line --version prints: "0.1.0 (commit 1a2b3c4d5e6f, go1.26.8)".
func (i Info) String() string {
	s := i.Version + " ("
	if i.Commit != "" {
		c := i.Commit
		if len(c) > 12 && !strings.HasSuffix(c, "-dirty") {
			c = c[:12]
		}
		s += "commit " + c + ", "
	}
	return s + i.Go + ")"
}
