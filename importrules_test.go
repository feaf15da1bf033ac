package nodeplane_test

import (
	"go/build"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// The import rules of doc/architecture.md, checked on the source: every
// package of the module is parsed with go/build (no go command, no network)
// and its imports compared with what its layer may import.

const module = "github.com/nodeplane/nodeplane"

// layer is what a subtree of the module may import directly from the
// module, and which packages outside it it must not reach even
// transitively.
type layer struct {
	// pkg is a package path relative to the module ("" for the root);
	// "x/..." is x and everything below it.
	pkg string
	// may lists the module packages (same notation) the layer may import.
	// The layer's own subtree is always allowed.
	may []string
	// never lists path prefixes outside the module the layer must not
	// reach through any chain of imports.
	never []string
}

// kernel is what a pure package must not link: BPF loading, netlink and
// namespace code.
var kernel = []string{"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/vishvananda/netns"}

// ciliumAPI is Cilium's module, which only flow/hubble imports (for the
// Hubble protos); nothing else may pay for it.
const ciliumAPI = "github.com/cilium/cilium"

// prometheus is client_golang, which only flow/metrics imports.
const prometheus = "github.com/prometheus/"

// cniModule is containernetworking/cni (skel, types, libcni), which only
// the CNI plugin example imports: the library is not tied to CNI.
const cniModule = "github.com/containernetworking/"

// kubernetes is client-go and the API types, which only the node agent
// example links (its -kubeconfig source): the SDK packages and the CNI
// plugin, a process the runtime starts per pod, stay free of them.
var kubernetes = []string{"k8s.io/", "sigs.k8s.io/"}

// kubeClient is the one package that may reach kubernetes.
const kubeClient = "examples/node"

// pure is kernel plus the heavy dependencies of the flow exporters.
var pure = append(append([]string{}, kernel...), ciliumAPI, prometheus, cniModule)

// The layers, lowest first; a package matches the first layer whose pkg
// covers it.
var layers = []layer{
	{pkg: "", may: nil, never: []string{"github.com/", "golang.org/", "go.etcd.io/", "go.yaml.in/", "go.uber.org/"}},
	{pkg: "datapath/monitor", may: []string{""}, never: pure},
	{pkg: "policy/mapstate", may: []string{"", "identity", "datapath/monitor"}, never: pure},
	{pkg: "identity/...", may: []string{"", "internal/..."}, never: pure},
	{pkg: "fqdn", may: []string{""}, never: pure},
	{pkg: "policy/...", may: []string{"", "identity/...", "fqdn", "datapath/monitor", "internal/..."}, never: pure},
	{pkg: "datapath/...", may: []string{"", "identity/...", "policy/mapstate", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	// flow reads records through datapath/monitor, not datapath: a flow
	// consumer links no BPF object. Its exporters carry their own weight.
	{pkg: "flow/hubble", may: []string{"", "datapath/monitor", "identity/...", "flow", "flow/metrics"}, never: append(append([]string{}, kernel...), cniModule)},
	{pkg: "flow/metrics", may: []string{"", "datapath/monitor", "identity/...", "flow"}, never: append(append([]string{}, kernel...), ciliumAPI, cniModule)},
	{pkg: "flow/...", may: []string{"", "datapath/monitor", "identity/...", "internal/..."}, never: pure},
	// bandwidth writes rates through datapath; datapath never imports it.
	{pkg: "bandwidth/...", may: []string{"", "datapath/...", "identity/...", "policy/mapstate", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	{pkg: "lb/...", may: []string{"", "datapath/monitor", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	{pkg: "ipam/...", may: []string{"", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	// overlay joins nodes: the registry and its syncer feed the ipcache,
	// the tunnel device and its programs belong to the datapath.
	{pkg: "overlay/...", may: []string{"", "identity/...", "ipam/...", "datapath/...", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	{pkg: "proxy/...", may: []string{"", "identity/...", "policy/...", "datapath/...", "flow", "proxy/...", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	{pkg: "internal/testutils/...", may: []string{"", "internal/..."}},
	{pkg: "internal/...", may: []string{"", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	// policytrace only parses and traces: no kernel code, no BPF object.
	// bandwidth writes rates through datapath; datapath never imports it.
	{pkg: "bandwidth/...", may: []string{"", "datapath/...", "identity/...", "policy/mapstate", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	{pkg: "lb/...", may: []string{"", "datapath/monitor", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	{pkg: "ipam/...", may: []string{"", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
	// overlay joins nodes: the registry and its syncer feed the ipcache,
	// the tunnel device and its programs belong to the datapath.
	{pkg: "overlay/...", may: []string{"", "identity/...", "ipam/...", "datapath/...", "internal/..."}, never: []string{ciliumAPI, prometheus, cniModule}},
}

// covers reports whether pattern (module-relative, "x/..." for a subtree)
// covers the module-relative package p.
// isTestHelper reports whether p is a package of test helpers, as
// proxy/internal/proxytest: internal, named ...test, imported only by
// tests (which the layer rules check like any other import).
func isTestHelper(p string) bool {
	return strings.Contains(p, "internal/") && strings.HasSuffix(path.Base(p), "test")
}

func covers(pattern, p string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == base || strings.HasPrefix(p, base+"/")
	}
	return p == pattern
}

func layerOf(p string) *layer {
	for i := range layers {
		if covers(layers[i].pkg, p) {
			return &layers[i]
		}
	}
	return nil
}

// pkgInfo is one package's imports, by module-relative path for module
// packages and full path for the rest (standard library excluded).
type pkgInfo struct {
	imports, testImports []string
}

// loadModule parses every package of the module under root, skipping
// testdata, hidden directories and nested modules.
func loadModule(t *testing.T, root string) map[string]pkgInfo {
	t.Helper()
	pkgs := map[string]pkgInfo{}
	err := filepath.WalkDir(root, func(dir string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		name := d.Name()
		if dir != root {
			if name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				return filepath.SkipDir
			}
		}
		bp, err := build.Default.ImportDir(dir, 0)
		if err != nil {
			if _, ok := err.(*build.NoGoError); ok {
				return nil
			}
			return err
		}
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "." {
			rel = ""
		}
		pkgs[rel] = pkgInfo{
			imports:     nonStd(bp.Imports),
			testImports: nonStd(append(slices.Clone(bp.TestImports), bp.XTestImports...)),
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

// nonStd keeps the imports outside the standard library, module packages
// relative to the module.
func nonStd(imports []string) []string {
	var out []string
	for _, imp := range imports {
		switch {
		case imp == module:
			out = append(out, "")
		case strings.HasPrefix(imp, module+"/"):
			out = append(out, strings.TrimPrefix(imp, module+"/"))
		case strings.Contains(strings.SplitN(imp, "/", 2)[0], "."):
			out = append(out, imp)
		}
	}
	return out
}

func isModule(imp string) bool {
	return imp == "" || !strings.Contains(strings.SplitN(imp, "/", 2)[0], ".")
}

func show(p string) string {
	if p == "" {
		return module
	}
	return path.Join(module, p)
}

func TestImportRules(t *testing.T) {
	pkgs := loadModule(t, ".")
	if _, ok := pkgs["policy/mapstate"]; !ok {
		t.Fatalf("found %d packages but not policy/mapstate: run the test from the module root", len(pkgs))
	}
	names := make([]string, 0, len(pkgs))
	for p := range pkgs {
		names = append(names, p)
	}
	sort.Strings(names)

	for _, p := range names {
		info := pkgs[p]
		// Nothing imports the examples (but examples share
		// examples/internal), and only tests use testutils.
		for _, imp := range info.imports {
			if covers("examples/...", imp) && !(covers("examples/internal/...", imp) && covers("examples/...", p)) {
				t.Errorf("%s imports %s: nothing may import an example", show(p), show(imp))
			}
			if isModule(imp) && isTestHelper(strings.TrimPrefix(imp, module+"/")) && !isTestHelper(p) {
				t.Errorf("%s imports the test helpers %s outside its tests", show(p), show(imp))
			}
			if covers("internal/testutils/...", imp) && !covers("internal/testutils/...", p) && !isTestHelper(p) {
				t.Errorf("%s imports %s outside its tests", show(p), show(imp))
			}
		}
		for _, imp := range info.testImports {
			if covers("examples/...", imp) && !(covers("examples/internal/...", imp) && covers("examples/...", p)) {
				t.Errorf("tests of %s import %s: nothing may import an example", show(p), show(imp))
			}
		}

		if p != kubeClient {
			for _, chain := range forbiddenChains(pkgs, p, kubernetes) {
				t.Errorf("%s reaches %s: only %s may link client-go: %s", show(p), chain[len(chain)-1], show(kubeClient), strings.Join(chain, " -> "))
			}
		}

		l := layerOf(p)
		if l == nil {
			t.Logf("%s: no layer in the import rules; add it to doc/architecture.md and this test", show(p))
			continue
		}
		for _, imp := range info.imports {
			if !isModule(imp) || covers(l.pkg, imp) {
				continue
			}
			if !slices.ContainsFunc(l.may, func(m string) bool { return covers(m, imp) }) {
				t.Errorf("%s imports %s: layer %q may import only %q", show(p), show(imp), l.pkg, l.may)
			}
		}
		if len(l.never) > 0 {
			for _, chain := range forbiddenChains(pkgs, p, l.never) {
				t.Errorf("%s reaches %s: %s", show(p), chain[len(chain)-1], strings.Join(chain, " -> "))
			}
		}
	}
}

// forbiddenChains returns, for each prefix of never that p reaches through
// non-test imports, the shortest import chain from p to a package under
// it, in the order of never.
func forbiddenChains(pkgs map[string]pkgInfo, p string, never []string) [][]string {
	found := make([][]string, len(never))
	seen := map[string]bool{p: true}
	type item struct {
		pkg   string
		chain []string
	}
	queue := []item{{p, []string{show(p)}}}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		for _, imp := range pkgs[it.pkg].imports {
			if isModule(imp) {
				if !seen[imp] {
					seen[imp] = true
					queue = append(queue, item{imp, append(slices.Clone(it.chain), show(imp))})
				}
				continue
			}
			for i, n := range never {
				if found[i] == nil && strings.HasPrefix(imp, n) {
					found[i] = append(slices.Clone(it.chain), imp)
				}
			}
		}
	}
	return slices.DeleteFunc(found, func(c []string) bool { return c == nil })
}
