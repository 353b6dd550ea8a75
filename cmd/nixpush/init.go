package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// initFlags are nixpush init's flags.
type initFlags struct {
	storeURI, keyFile, caCert, createUser, credFile string
	publicRead, printPolicy, rotate, credFileSet    bool
	expireDays                                      int
}

func parseInitFlags(args []string, stderr io.Writer) (*initFlags, bool) {
	fs := flag.NewFlagSet("nixpush init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &initFlags{}
	fs.StringVar(&f.storeURI, "store-uri", os.Getenv("NIXPUSH_STORE_URI"), "the cache to prepare: s3://BUCKET?endpoint=HOST&... or file:///DIR (env NIXPUSH_STORE_URI)")
	fs.BoolVar(&f.publicRead, "public-read", false, "allow anonymous download of the bucket's objects, so any Nix can read it over HTTP")
	fs.IntVar(&f.expireDays, "expire-days", 0, "expire objects after N days (a lifecycle rule); see the warning it prints")
	fs.BoolVar(&f.printPolicy, "print-policy", false, "print the least-privilege IAM policies for the uploading account and for gc")
	fs.StringVar(&f.keyFile, "secret-key-file", os.Getenv("NIXPUSH_SECRET_KEY_FILE"), "signing key, to print its public half in the consumer snippet")
	fs.StringVar(&f.caCert, "ca-certificate", "", "PEM file of a private CA that signed the S3 endpoint's certificate")
	fs.StringVar(&f.createUser, "create-user", "", "MinIO: make this the uploading account (uploader policy, random secret), through the admin API with the credentials init runs with")
	fs.StringVar(&f.credFile, "credentials-file", defaultCredentialsFile(), "with --create-user: the AWS shared credentials file to write the [NAME] profile to (mode 0600)")
	fs.BoolVar(&f.rotate, "rotate-secret", false, "with --create-user: give an existing user a new secret")
	if !parseNoArgs(fs, args) {
		return f, false
	}
	fs.Visit(func(fl *flag.Flag) { f.credFileSet = f.credFileSet || fl.Name == "credentials-file" })
	return f, true
}

// check refuses bad flags and combinations before init touches the
// store or the disk; it returns the public key for the consumer snippet.
func (f *initFlags) check() (pub string, err error) {
	switch {
	case f.rotate && f.createUser == "":
		return "", errors.New("--rotate-secret goes with --create-user NAME")
	case f.credFileSet && f.createUser == "":
		return "", errors.New("--credentials-file goes with --create-user NAME (it is where the user's profile is written)")
	case f.storeURI == "":
		return "", errors.New("--store-uri is required, e.g. nixpush init --store-uri 's3://nix-cache?endpoint=minio.lan:9000&scheme=http' --public-read")
	case f.expireDays < 0:
		return "", fmt.Errorf("--expire-days %d: want a number of days above 0 (or none: no expiry)", f.expireDays)
	}
	if u, err := url.Parse(f.storeURI); err == nil && u.Scheme == "file" {
		switch {
		case f.publicRead || f.expireDays > 0:
			return "", fmt.Errorf("--public-read and --expire-days apply to S3 buckets only, not %s", f.storeURI)
		case f.createUser != "":
			return "", errors.New("--create-user applies to S3 buckets (MinIO) only")
		case f.printPolicy:
			return "", errors.New("--print-policy applies to S3 buckets only")
		}
	}
	if f.keyFile == "" {
		return "NAME:PUBLIC-KEY (nixpush keygen prints it)", nil
	}
	key, err := nix.LoadSecretKeyFile(f.keyFile)
	if err != nil {
		return "", err
	}
	return key.ToPublicKey().String(), nil
}

func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, ok := parseInitFlags(args, stderr)
	if !ok {
		return 2
	}
	pub, err := f.check()
	if err != nil {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		return 2
	}
	st, err := store.Open(ctx, f.storeURI, store.Options{CACertFile: f.caCert})
	if err != nil {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		return 2
	}
	if f.expireDays > 0 {
		fmt.Fprintf(stderr, "nixpush init: warning: objects older than %d days will be deleted whatever refers to them: "+
			"expiry breaks closures (a path outlives a dependency and Nix refuses it until it is pushed again). "+
			"Prefer closure-aware retention: nixpush gc --older-than %dd (see docs/retention.md).\n", f.expireDays, f.expireDays)
	}
	changes, err := uploader.Init(ctx, st, store.InitOptions{PublicRead: f.publicRead, ExpireDays: f.expireDays})
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
	if f.createUser != "" {
		more, code := ensureUser(ctx, s3, f.storeURI, f.createUser, f.credFile, f.rotate, stdout, stderr)
		if code != 0 {
			return code
		}
		changes = append(changes, more...)
	}
	if len(changes) == 0 {
		fmt.Fprintf(stdout, "%s is ready; nothing to change\n", st)
	}
	f.printSnippets(stdout, s3, isS3, pub)
	return 0
}

// printSnippets prints the policies (--print-policy), the daemon's
// command line (--create-user) and the consumers' settings.
func (f *initFlags) printSnippets(stdout io.Writer, s3 *store.S3Store, isS3 bool, pub string) {
	if f.printPolicy {
		u, _ := url.Parse(f.storeURI)
		fmt.Fprintf(stdout, "\n# least-privilege policy for the uploading account (as the classic nix-cache-write):\n%s\n", uploader.UploaderPolicy(u.Host))
		fmt.Fprintf(stdout, "\n# policy for the account nixpush gc, pin and unpin run with (list, read, delete, abort uploads; write only under nixpush/):\n%s\n", uploader.GCPolicy(u.Host))
	}
	if f.createUser != "" {
		fmt.Fprintf(stdout, "\n# the daemon, uploading as %s:\nnixpush daemon --store-uri '%s' (with AWS_SHARED_CREDENTIALS_FILE=%s)\n",
			f.createUser, withProfile(f.storeURI, f.createUser), f.credFile)
	}
	substituter := f.storeURI
	if isS3 && f.publicRead {
		substituter = s3.HTTPURL()
	}
	fmt.Fprintf(stdout, `
# consumers (NixOS):
nix.settings = {
  substituters = [ %q ];
  trusted-public-keys = [ %q ];
};
`, substituter, pub)
}

// ensureUser makes name the uploading account and writes its profile; it
// prints what changed and returns it, with an exit code.
func ensureUser(ctx context.Context, s3 *store.S3Store, uri, name, credFile string, rotate bool, stdout, stderr io.Writer) ([]string, int) {
	changes, secret, err := s3.EnsureUploader(ctx, name, uploader.UploaderPolicy(s3.Bucket()), rotate)
	for _, c := range changes {
		fmt.Fprintf(stdout, "changed: %s\n", c)
	}
	if errors.Is(err, store.ErrNoAdminAPI) {
		fmt.Fprintf(stderr, "nixpush init: %v\n", err)
		fmt.Fprintf(stderr, "create the uploading account with your provider's tools and attach this policy to it (name it %s):\n%s\n",
			s3.UploaderPolicyName(), uploader.UploaderPolicy(s3.Bucket()))
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
