package statefile_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nodeplane/nodeplane/internal/statefile"
	"github.com/nodeplane/nodeplane/internal/statefile/statefiletest"
)

var fileFormat = statefile.Format{Magic: "nodeplane-test-state", Version: 3}

func TestFileSaveLoad(t *testing.T) {
	dir := t.TempDir()
	f, err := statefile.New(filepath.Join(dir, "state"), fileFormat)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
	for _, body := range []string{"first", "second, longer than the first", ""} {
		if renamed, err := f.Save([]byte(body)); err != nil || !renamed {
			t.Fatalf("Save(%q) = %v, %v", body, renamed, err)
		}
		got, err := f.Load()
		if err != nil || string(got) != body {
			t.Fatalf("Load after Save(%q) = %q, %v", body, got, err)
		}
		// What is on disk is exactly the framed body, readable by anyone
		// who decodes the format.
		data, err := os.ReadFile(f.Path())
		if err != nil {
			t.Fatal(err)
		}
		if want := fileFormat.Encode([]byte(body)); string(data) != string(want) {
			t.Fatalf("file holds %q, want %q", data, want)
		}
	}
	info, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", info.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after saves, want only the state file", len(entries))
	}

	os.WriteFile(f.Path(), []byte("garbage"), 0o600)
	if _, err := f.Load(); !errors.Is(err, statefile.ErrCorrupt) {
		t.Errorf("Load of garbage: %v, want ErrCorrupt", err)
	}
}

func TestNewRejectsBadPath(t *testing.T) {
	for _, p := range []string{"", ".", "..", "/", "a/..", "a/b/../.."} {
		if _, err := statefile.New(p, fileFormat); !errors.Is(err, statefile.ErrInvalidPath) {
			t.Errorf("New(%q): %v, want ErrInvalidPath", p, err)
		}
	}
}

// TestFileSaveFaults fails each step of a Save in turn: before the rename
// the old content stays and no temporary file is left; from the rename on
// the new content is in place and Save says it was renamed.
func TestFileSaveFaults(t *testing.T) {
	steps := statefiletest.SaveSteps
	clean := &statefiletest.FaultFS{}
	f, err := statefile.New(filepath.Join(t.TempDir(), "state"), fileFormat)
	if err != nil {
		t.Fatal(err)
	}
	f.FS = clean
	if _, err := f.Save([]byte("old")); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(clean.Steps, steps) {
		t.Fatalf("steps %v, want %v", clean.Steps, steps)
	}
	const renameStep = statefiletest.RenameStep
	for step := 1; step <= len(steps); step++ {
		t.Run(fmt.Sprint(step, steps[step-1]), func(t *testing.T) {
			f, _ := statefile.New(filepath.Join(t.TempDir(), "state"), fileFormat)
			if _, err := f.Save([]byte("old")); err != nil {
				t.Fatal(err)
			}
			f.FS = &statefiletest.FaultFS{FailAt: step}
			renamed, err := f.Save([]byte("new"))
			if !errors.Is(err, statefiletest.ErrInjected) {
				t.Fatalf("Save: %v, want the injected fault", err)
			}
			if want := step > renameStep; renamed != want {
				t.Errorf("renamed = %v, want %v", renamed, want)
			}
			want := "old"
			if step > renameStep {
				want = "new"
			}
			if got, err := f.Load(); err != nil || string(got) != want {
				t.Errorf("Load after the fault = %q, %v; want %q", got, err, want)
			}
			if _, err := os.Stat(f.Path() + ".tmp"); step != 1 && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("temporary file left behind: %v", err)
			}
		})
	}
}
