package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/api/client"
	"github.com/nixpush/nixpush/internal/version"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// checkLine is one check of nixpush check.
type checkLine struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	Fix    string `json:"fix,omitempty"`
}

type checkReport struct {
	Version version.Info `json:"version"`
	OK      bool         `json:"ok"`
	Checks  []checkLine  `json:"checks"`
}

// checkFlags are nixpush check's flags.
type checkFlags struct {
	storeURI, publicKey, caCert, socket, storeDir string
	keyFiles                                      stringsFlag
	asJSON                                        bool
}

func parseCheckFlags(args []string, stderr io.Writer) (*checkFlags, bool) {
	fs := flag.NewFlagSet("nixpush check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &checkFlags{}
	fs.StringVar(&f.storeURI, "store-uri", os.Getenv("NIXPUSH_STORE_URI"), "the cache to check: s3://BUCKET?endpoint=HOST&... or file:///DIR (env NIXPUSH_STORE_URI)")
	fs.Var(&f.keyFiles, "secret-key-file", "signing key to check (repeatable); its public half is printed")
	fs.StringVar(&f.publicKey, "public-key", "", "the public key consumers trust (name:base64): must be the public half of a --secret-key-file")
	fs.StringVar(&f.caCert, "ca-certificate", "", "PEM file of a private CA that signed the S3 endpoint's certificate")
	fs.StringVar(&f.socket, "socket", envOr("NIXPUSH_SOCKET", api.DefaultSocket), "daemon socket (env NIXPUSH_SOCKET)")
	fs.StringVar(&f.storeDir, "store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON for machines")
	if !parseNoArgs(fs, args) {
		return f, false
	}
	if len(f.keyFiles) == 0 && os.Getenv("NIXPUSH_SECRET_KEY_FILE") != "" {
		f.keyFiles = stringsFlag{os.Getenv("NIXPUSH_SECRET_KEY_FILE")}
	}
	return f, true
}

// add records one check.
func (rep *checkReport) add(c checkLine) {
	rep.Checks = append(rep.Checks, c)
	rep.OK = rep.OK && c.OK
}

// runCheck checks what nixpush needs and reports each check; a problem
// found is a failed check, never a refusal: check changes nothing.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, ok := parseCheckFlags(args, stderr)
	if !ok {
		return 2
	}
	rep := &checkReport{Version: version.Get(), OK: true}
	f.checkStore(ctx, rep)
	f.checkKeys(rep)
	// The Nix side: the hook, and the daemon behind it.
	rep.add(hookSetting(ctx))
	rep.add(f.checkDaemon(ctx))
	if f.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printCheck(stdout, rep)
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// checkStore checks the store as the daemon does, and then as consumers
// read it.
func (f *checkFlags) checkStore(ctx context.Context, rep *checkReport) {
	if f.storeURI == "" {
		rep.add(checkLine{Name: "store", Detail: "no --store-uri given", Fix: "pass --store-uri (or set NIXPUSH_STORE_URI) to check the cache"})
		return
	}
	st, err := store.Open(ctx, f.storeURI, store.Options{CACertFile: f.caCert})
	if err != nil {
		rep.add(checkLine{Name: "store URI", Detail: err.Error(), Fix: "see nixpush daemon -h for the URI syntax"})
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	for _, r := range uploader.Preflight(cctx, st, uploader.PreflightOptions{StoreDir: f.storeDir}) {
		c := checkLine{Name: r.Name, OK: r.Err == nil, Detail: r.Note}
		if r.Err != nil {
			c.Detail, c.Fix = r.Err.Error(), strings.ReplaceAll(r.Err.Fix(), "URI", f.storeURI)
		}
		rep.add(c)
	}
	cancel()
	if s3, ok := store.As[*store.S3Store](st); ok {
		rep.add(anonymousRead(ctx, s3.HTTPURL(), f.caCert, f.storeURI))
	}
}

// checkKeys checks the signing keys, and that --public-key is the public
// half of one.
func (f *checkFlags) checkKeys(rep *checkReport) {
	var pubs []string
	for _, file := range f.keyFiles {
		key, err := nix.LoadSecretKeyFile(file)
		if err != nil {
			rep.add(checkLine{Name: "secret key " + file, Detail: err.Error(), Fix: "make one with: nixpush keygen --name NAME --out DIR"})
			continue
		}
		pub := key.ToPublicKey().String()
		pubs = append(pubs, pub)
		rep.add(checkLine{Name: "secret key " + file, OK: true, Detail: "public key " + pub})
	}
	if f.publicKey == "" {
		return
	}
	want := strings.TrimSpace(f.publicKey)
	c := checkLine{Name: "public key " + want}
	switch {
	case len(pubs) == 0:
		c.Detail, c.Fix = "no --secret-key-file to compare it with", "pass the daemon's --secret-key-file"
	case contains(pubs, want):
		c.OK, c.Detail = true, "matches a secret key: consumers trusting it accept what the daemon signs"
	default:
		c.Detail = "matches no secret key given (their public keys: " + strings.Join(pubs, ", ") + ")"
		c.Fix = "give consumers the public key printed above in trusted-public-keys, or sign with the key they trust"
	}
	rep.add(c)
}

// checkDaemon asks the daemon behind --socket how it fares.
func (f *checkFlags) checkDaemon(ctx context.Context) checkLine {
	st, err := client.New(f.socket).Status(ctx)
	if err != nil {
		return checkLine{Name: "daemon socket " + f.socket, Detail: explain(err).Error(), Fix: "start nixpush daemon (systemctl start nixpush), or pass --socket"}
	}
	c := checkLine{Name: "daemon socket " + f.socket, OK: true, Detail: "nixpush " + st.Version.String() + " pushing to " + st.Store}
	if !st.StoreCheck.OK && st.StoreCheck.Error != "" {
		c.OK, c.Detail, c.Fix = false, "the daemon's store check fails: "+st.StoreCheck.Error, st.StoreCheck.Fix
	}
	return c
}

func printCheck(w io.Writer, rep *checkReport) {
	fmt.Fprintf(w, "nixpush %s\n", rep.Version)
	for _, c := range rep.Checks {
		mark := "✓"
		if !c.OK {
			mark = "✗"
		}
		line := mark + " " + c.Name
		if c.Detail != "" {
			line += ": " + c.Detail
		}
		fmt.Fprintln(w, line)
		if c.Fix != "" && !c.OK {
			fmt.Fprintf(w, "    fix: %s\n", c.Fix)
		}
	}
}

// anonymousRead fetches nix-cache-info over plain HTTP(S) with no
// credentials, as a consumer's substituter does.
func anonymousRead(ctx context.Context, base, caCert, uri string) checkLine {
	c := checkLine{Name: "anonymous read " + base + "/nix-cache-info"}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caCert != "" {
		// OpenStore read it already: an error here is not news.
		if pool, err := store.CAPool(caCert); err == nil {
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
	}
	cl := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/nix-cache-info", nil)
	resp, err := cl.Do(req)
	if err != nil {
		c.Detail, c.Fix = err.Error(), "consumers must reach "+base+" (with the CA as Nix's ssl-cert-file for a private CA)"
		return c
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusOK && strings.Contains(string(body), "StoreDir:"):
		c.OK, c.Detail = true, "consumers without credentials can substitute from "+base
	case resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
		c.Detail = resp.Status + ": consumers without credentials cannot substitute"
		c.Fix = "allow anonymous download: nixpush init --store-uri '" + uri + "' --public-read (or give consumers credentials and an s3:// substituter)"
	default:
		c.Detail, c.Fix = resp.Status, "prepare the cache: nixpush init --store-uri '"+uri+"'"
	}
	return c
}

// hookSetting finds nixpush-hook in Nix's post-build-hook setting.
func hookSetting(ctx context.Context) checkLine {
	c := checkLine{Name: "Nix post-build-hook"}
	out, err := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "show-config").Output()
	if err != nil {
		c.Detail, c.Fix = "nix show-config: "+err.Error(), "install Nix, or check it runs"
		return c
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "post-build-hook = "); ok {
			v = strings.TrimSpace(v)
			if strings.Contains(v, "nixpush-hook") {
				c.OK, c.Detail = true, v
				return c
			}
			if v != "" {
				c.Detail = v + " (not nixpush-hook)"
			}
		}
	}
	if c.Detail == "" {
		c.Detail = "not set"
	}
	c.Fix = "set post-build-hook = /path/to/nixpush-hook in nix.conf (NixOS: services.nixpush.enable)"
	return c
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
