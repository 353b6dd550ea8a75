// Package version tells which nixpush is running: the version and commit
// that package.nix sets with -ldflags -X, or else those Go recorded in the
// binary's build info (the module version, vcs.revision).
//
// It is linked into nixpush-hook, which Nix runs after every build, so it
// reads the build info without runtime/debug: ReadBuildInfo parses with fmt,
// which would add a third to the hook's size for one line of text.
//
// Invariant: every nixpush binary, the hook included, reports the same
// three things the same way (version, commit, Go toolchain), and a plain
// `go build` reports "devel" with the commit Go recorded, never nothing.
package version
