package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/nixpush/nixpush/store"

	"github.com/nixpush/nixpush/bucketadmin"
	"github.com/nixpush/nixpush/nix"
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
	createUser := fs.String("create-user", "", "MinIO: make this the uploading account (uploader policy, random secret), through the admin API with the credentials init runs with")
	credFile := fs.String("credentials-file", defaultCredentialsFile(), "with --create-user: the AWS shared credentials file to write the [NAME] profile to (mode 0600)")
	rotate := fs.Bool("rotate-secret", false, "with --create-user: give an existing user a new secret")
	if !parseNoArgs(fs, args) {
		return 2
	}
	if *rotate && *createUser == "" {
		fmt.Fprintln(stderr, "nixpush init: --rotate-secret goes with --create-user NAME")
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
	st, err := store.Open(ctx, *storeURI, store.Options{CACertFile: *caCert})
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
			"Prefer closure-aware retention: nixpush gc --older-than %dd (see docs/retention.md).\n", *expireDays, *expireDays)
	}
	changes, err := bucketadmin.Init(ctx, st, store.InitOptions{PublicRead: *publicRead, ExpireDays: *expireDays})
	for _, c := range changes {
		fmt.Fprintf(stdout, "changed: %s\n", c)
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		if se := store.AsStoreError(err); se != nil && se.Problem != store.NoBucket {
			fmt.Fprintf(stderr, "fix: %s\n", se.Fix())
		}
		return 1
	}
	s3, isS3 := store.As[*store.S3Store](st)
	if *createUser != "" {
		if !isS3 {
			fmt.Fprintln(stderr, "nixpush init: --create-user applies to S3 buckets (MinIO) only")
			return 2
		}
		more, code := ensureUser(ctx, s3, *storeURI, *createUser, *credFile, *rotate, stdout, stderr)
		if code != 0 {
			return code
		}
		changes = append(changes, more...)
	}
	if len(changes) == 0 {
		fmt.Fprintf(stdout, "%s is ready; nothing to change\n", st)
	}
	if *printPolicy {
		if !isS3 {
			fmt.Fprintln(stderr, "nixpush init: --print-policy applies to S3 buckets only")
			return 2
		}
		u, _ := url.Parse(*storeURI)
		fmt.Fprintf(stdout, "\n# least-privilege policy for the uploading account (as the classic nix-cache-write):\n%s\n", bucketadmin.UploaderPolicy(u.Host))
		fmt.Fprintf(stdout, "\n# policy for the account nixpush gc, pin and unpin run with (list, read, delete, abort uploads; write only under nixpush/):\n%s\n", bucketadmin.GCPolicy(u.Host))
	}
	if *createUser != "" {
		fmt.Fprintf(stdout, "\n# the daemon, uploading as %s:\nnixpush daemon --store-uri '%s' (with AWS_SHARED_CREDENTIALS_FILE=%s)\n",
			*createUser, withProfile(*storeURI, *createUser), *credFile)
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

// ensureUser makes name the uploading account and writes its profile; it
// prints what changed and returns it, with an exit code.
func ensureUser(ctx context.Context, s3 *store.S3Store, uri, name, credFile string, rotate bool, stdout, stderr io.Writer) ([]string, int) {
	changes, secret, err := s3.EnsureUploader(ctx, name, bucketadmin.UploaderPolicy(s3.Bucket()), rotate)
	for _, c := range changes {
		fmt.Fprintf(stdout, "changed: %s\n", c)
	}
	if errors.Is(err, store.ErrNoAdminAPI) {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		fmt.Fprintf(stderr, "create the uploading account with your provider's tools and attach this policy to it (name it %s):\n%s\n",
			s3.UploaderPolicyName(), bucketadmin.UploaderPolicy(s3.Bucket()))
		return changes, 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		return changes, 1
	}
	if secret != "" {
		if err := writeProfile(credFile, name, name, secret); err != nil {
			fmt.Fprintf(stderr, "nixpush init: write the [%s] profile: %v (the user's secret is lost; run again with --rotate-secret)\n", name, err)
			return changes, 1
		}
		c := fmt.Sprintf("wrote profile [%s] to %s (mode 0600)", name, credFile)
		fmt.Fprintf(stdout, "changed: %s\n", c)
		return append(changes, c), 0
	}
	key, sec, err := readProfile(credFile, name)
	if err != nil {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		return changes, 1
	}
	if key != name || sec == "" {
		fmt.Fprintf(stderr, "nixpush init: user %s exists, but %s has no [%s] profile with its key; its secret cannot be read back: run again with --rotate-secret to give it a new one\n", name, credFile, name)
		return changes, 1
	}
	if err := s3.CheckKey(ctx, key, sec); err != nil {
		fmt.Fprintf(stderr, "nixpush init: the [%s] profile in %s does not work (%v); run again with --rotate-secret\n", name, credFile, err)
		return changes, 1
	}
	return changes, 0
}

// withProfile adds profile=NAME to an s3:// URI, replacing one it names.
func withProfile(uri, profile string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return uri
	}
	q := u.Query()
	q.Set("profile", profile)
	u.RawQuery = q.Encode()
	return u.String()
}
