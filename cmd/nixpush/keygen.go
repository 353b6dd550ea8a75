package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

func runKeygen(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "key name, by custom the cache's host name and a number: cache.example.org-1")
	out := fs.String("out", "", "directory to write secret.key (mode 0600) and public.key into")
	if !parseNoArgs(fs, args) {
		return 2
	}
	if *name == "" || *out == "" {
		fmt.Fprintln(stderr, "nixpush keygen: --name and --out are required, e.g. nixpush keygen --name cache.example.org-1 --out /var/lib/nixpush/keys")
		return 2
	}
	if strings.ContainsAny(*name, ": \t\n") {
		// Nix splits a key at its first colon: the name would not read back.
		fmt.Fprintf(stderr, "nixpush keygen: --name %q: want a name without colons or spaces, such as cache.example.org-1\n", *name)
		return 2
	}
	sec := filepath.Join(*out, "secret.key")
	pubFile := filepath.Join(*out, "public.key")
	if _, err := os.Stat(sec); err == nil {
		fmt.Fprintf(stderr, "nixpush keygen: %s exists; refusing to overwrite a signing key (move it away first)\n", sec)
		return 1
	}
	sk, pk, err := signature.GenerateKeypair(*name, rand.Reader)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush keygen: %v\n", err)
		return 1
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(stderr, "nixpush keygen: %v\n", err)
		return 1
	}
	if err := os.WriteFile(sec, []byte(sk.String()), 0o600); err != nil {
		fmt.Fprintf(stderr, "nixpush keygen: %v\n", err)
		return 1
	}
	if err := os.WriteFile(pubFile, []byte(pk.String()), 0o644); err != nil {
		fmt.Fprintf(stderr, "nixpush keygen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s and %s\npublic key: %s\n", sec, pubFile, pk.String())
	return 0
}
