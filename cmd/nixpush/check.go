package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/nixpush/nixpush/store"

	"github.com/nixpush/nixpush/bucketadmin"
	"github.com/nixpush/nixpush/hook"
	"github.com/nixpush/nixpush/hook/client"
	"github.com/nixpush/nixpush/internal/version"
	"github.com/nixpush/nixpush/nix"
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

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixpush check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storeURI := fs.String("store-uri", os.Getenv("NIXPUSH_STORE_URI"), "the cache to check: s3://BUCKET?endpoint=HOST&... or file:///DIR (env NIXPUSH_STORE_URI)")
	var keyFiles stringsFlag
	fs.Var(&keyFiles, "secret-key-file", "signing key to check (repeatable); its public half is printed")
	publicKey := fs.String("public-key", "", "the public key consumers trust (name:base64): must be the public half of a --secret-key-file")
	caCert := fs.String("ca-certificate", "", "PEM file of a private CA that signed the S3 endpoint's certificate")
	socket := fs.String("socket", envOr("NIXPUSH_SOCKET", hook.DefaultSocket), "daemon socket (env NIXPUSH_SOCKET)")
	storeDir := fs.String("store-dir", envOr("NIX_STORE_DIR", nix.DefaultStoreDir), "the Nix store directory")
	asJSON := fs.Bool("json", false, "print JSON for machines")
	if !parseNoArgs(fs, args) {
		return 2
	}
	if len(keyFiles) == 0 && os.Getenv("NIXPUSH_SECRET_KEY_FILE") != "" {
		keyFiles = stringsFlag{os.Getenv("NIXPUSH_SECRET_KEY_FILE")}
	}
	rep := checkReport{Version: version.Get(), OK: true}
	add := func(c checkLine) {
		rep.Checks = append(rep.Checks, c)
		rep.OK = rep.OK && c.OK
	}

	// The store, as the daemon checks it, and then as consumers read it.
	if *storeURI == "" {
		add(checkLine{Name: "store", Detail: "no --store-uri given", Fix: "pass --store-uri (or set NIXPUSH_STORE_URI) to check the cache"})
	} else if st, err := store.Open(ctx, *storeURI, store.Options{CACertFile: *caCert}); err != nil {
		add(checkLine{Name: "store URI", Detail: err.Error(), Fix: "see nixpush daemon -h for the URI syntax"})
	} else {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for _, r := range bucketadmin.Preflight(cctx, st, bucketadmin.PreflightOptions{StoreDir: *storeDir}) {
			c := checkLine{Name: r.Name, OK: r.Err == nil, Detail: r.Note}
			if r.Err != nil {
				c.Detail, c.Fix = r.Err.Error(), strings.ReplaceAll(r.Err.Fix(), "URI", *storeURI)
			}
			add(c)
		}
		cancel()
		if s3, ok := store.As[*store.S3Store](st); ok {
			add(anonymousRead(ctx, s3.HTTPURL(), *caCert, *storeURI))
		}
	}

	// The signing keys.
	var pubs []string
	for _, f := range keyFiles {
		key, err := nix.LoadSecretKeyFile(f)
		if err != nil {
			add(checkLine{Name: "secret key " + f, Detail: err.Error(), Fix: "make one with: nixpush keygen --name NAME --out DIR"})
			continue
		}
		pub := key.ToPublicKey().String()
		pubs = append(pubs, pub)
		add(checkLine{Name: "secret key " + f, OK: true, Detail: "public key " + pub})
	}
	if *publicKey != "" {
		want := strings.TrimSpace(*publicKey)
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
		add(c)
	}

	// The Nix side: the hook, and the daemon behind it.
	add(hookSetting(ctx))
	if st, err := client.New(*socket).Status(ctx); err != nil {
		add(checkLine{Name: "daemon socket " + *socket, Detail: explain(err).Error(), Fix: "start nixpush daemon (systemctl start nixpush), or pass --socket"})
	} else {
		c := checkLine{Name: "daemon socket " + *socket, OK: true, Detail: "nixpush " + st.Version.String() + " pushing to " + st.Store}
		if !st.StoreCheck.OK && st.StoreCheck.Error != "" {
			c.OK, c.Detail, c.Fix = false, "the daemon's store check fails: "+st.StoreCheck.Error, st.StoreCheck.Fix
		}
		add(c)
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		fmt.Fprintf(stdout, "nixpush %s\n", rep.Version)
		for _, c := range rep.Checks {
			mark := "✓"
			if !c.OK {
				mark = "✗"
			}
			line := mark + " " + c.Name
			if c.Detail != "" {
				line += ": " + c.Detail
			}
			fmt.Fprintln(stdout, line)
			if c.Fix != "" && !c.OK {
				fmt.Fprintf(stdout, "    fix: %s\n", c.Fix)
			}
		}
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// anonymousRead fetches nix-cache-info over plain HTTP(S) with no
// credentials, as a consumer's substituter does.
func anonymousRead(ctx context.Context, base, caCert, uri string) checkLine {
	c := checkLine{Name: "anonymous read " + base + "/nix-cache-info"}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caCert != "" {
		if pem, err := os.ReadFile(caCert); err == nil {
			pool, _ := x509.SystemCertPool()
			if pool == nil {
				pool = x509.NewCertPool()
			}
			pool.AppendCertsFromPEM(pem)
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
