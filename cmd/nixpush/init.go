package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/uploader"
)

func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storeURI := fs.String("store-uri", os.Getenv("NIXPUSH_STORE_URI"), "the cache to prepare: s3://BUCKET?endpoint=HOST&... or file:///DIR (env NIXPUSH_STORE_URI)")
	publicRead := fs.Bool("public-read", false, "allow anonymous download of the bucket's objects, so any Nix can read it over HTTP")
	expireDays := fs.Int("expire-days", 0, "expire objects after N days (a lifecycle rule); see the warning it prints")
	printPolicy := fs.Bool("print-policy", false, "print the least-privilege IAM policies for the uploading account and for gc")
	keyFile := fs.String("secret-key-file", os.Getenv("NIXPUSH_SECRET_KEY_FILE"), "signing key, to print its public half in the consumer snippet")
	caCert := fs.String("ca-certificate", "", "PEM file of a private CA that signed the S3 endpoint's certificate")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *storeURI == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "nixpush init: --store-uri is required, e.g. nixpush init --store-uri 's3://nix-cache?endpoint=minio.lan:9000&scheme=http' --public-read")
		return 2
	}
	if *expireDays < 0 {
		fmt.Fprintln(stderr, "nixpush init: --expire-days must be positive")
		return 2
	}
	store, err := uploader.OpenStore(ctx, *storeURI, uploader.StoreOptions{CACertFile: *caCert})
	if err != nil {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		return 2
	}
	pub := "NAME:PUBLIC-KEY (nixpush keygen prints it)"
	if *keyFile != "" {
		key, err := nix.LoadSecretKeyFile(*keyFile)
		if err != nil {
			fmt.Fprintf(stderr, "nixpush init: %v\n", err)
			return 2
		}
		pub = key.ToPublicKey().String()
	}
	if *expireDays > 0 {
		fmt.Fprintf(stderr, "nixpush init: warning: objects older than %d days will be deleted whatever refers to them: "+
			"expiry breaks closures (a path outlives a dependency and Nix refuses it until it is pushed again). "+
			"Prefer closure-aware retention: nixpush gc --older-than %dd (see Retention in the README).\n", *expireDays, *expireDays)
	}
	changes, err := uploader.Init(ctx, store, uploader.InitOptions{PublicRead: *publicRead, ExpireDays: *expireDays})
	for _, c := range changes {
		fmt.Fprintf(stdout, "changed: %s\n", c)
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		if se := uploader.AsStoreError(err); se != nil && se.Problem != uploader.NoBucket {
			fmt.Fprintf(stderr, "fix: %s\n", se.Fix())
		}
		return 1
	}
	if len(changes) == 0 {
		fmt.Fprintf(stdout, "%s is ready; nothing to change\n", store)
	}
	s3, isS3 := store.(*uploader.S3Store)
	if *printPolicy {
		if !isS3 {
			fmt.Fprintln(stderr, "nixpush init: --print-policy applies to S3 buckets only")
			return 2
		}
		u, _ := url.Parse(*storeURI)
		fmt.Fprintf(stdout, "\n# least-privilege policy for the uploading account (as the classic nix-cache-write):\n%s\n", uploader.UploaderPolicy(u.Host))
		fmt.Fprintf(stdout, "\n# policy for the account nixpush gc, pin and unpin run with (list, read, delete, abort uploads; write only under nixpush/):\n%s\n", uploader.GCPolicy(u.Host))
	}
	substituter := *storeURI
	if isS3 && *publicRead {
		substituter = s3.HTTPURL()
	}
	fmt.Fprintf(stdout, `
# consumers (NixOS):
nix.settings = {
  substituters = [ %q ];
  trusted-public-keys = [ %q ];
};
`, substituter, pub)
	return 0
}
