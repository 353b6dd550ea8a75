package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// defaultCredentialsFile is where the AWS tools (and nixpush with
// profile=) look for profiles.
func defaultCredentialsFile() string {
	if f := os.Getenv("AWS_SHARED_CREDENTIALS_FILE"); f != "" {
		return f
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".aws", "credentials")
}

// readProfile returns the access key and secret of [profile] in an AWS
// shared credentials file ("" when the file or the profile is missing).
func readProfile(file, profile string) (key, secret string, err error) {
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return "", "", nil
	}
	if err != nil {
		return "", "", err
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			in = t == "["+profile+"]"
			continue
		}
		k, v, ok := strings.Cut(t, "=")
		if !in || !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "aws_access_key_id":
			key = strings.TrimSpace(v)
		case "aws_secret_access_key":
			secret = strings.TrimSpace(v)
		}
	}
	return key, secret, nil
}

// writeProfile sets [profile] in an AWS shared credentials file to the
// key and secret, keeping the file's other profiles and the profile's
// other settings; the file is replaced atomically with mode 0600.
func writeProfile(file, profile, key, secret string) error {
	old, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var out []string
	in, found := false, false
	set := func() {
		out = append(out, "aws_access_key_id = "+key, "aws_secret_access_key = "+secret)
	}
	lines := strings.Split(strings.TrimRight(string(old), "\n"), "\n")
	if len(old) == 0 {
		lines = nil
	}
	for _, line := range lines {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			in = t == "["+profile+"]"
			out = append(out, line)
			if in {
				found = true
				set()
			}
			continue
		}
		if k, _, ok := strings.Cut(t, "="); in && ok {
			if k = strings.TrimSpace(k); k == "aws_access_key_id" || k == "aws_secret_access_key" {
				continue
			}
		}
		out = append(out, line)
	}
	if !found {
		if len(out) > 0 {
			out = append(out, "")
		}
		out = append(out, "["+profile+"]")
		set()
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".credentials-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(strings.Join(out, "\n") + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("credentials file %s: %w", file, err)
	}
	return nil
}
