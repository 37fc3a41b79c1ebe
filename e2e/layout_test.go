package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestREADMETreeNamesEveryFolder keeps the README's "Where things are" tree
// true: every folder that holds Go code has its own line, and every line
// names a folder that exists. (The tree once grouped several hub folders on
// one line and left out hub/seal and schemas/problem/problemhttp.)
func TestREADMETreeNamesEveryFolder(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	tree := readmeTree(t, string(readme))

	var code []string
	err = filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != ".." && (n == "testdata" || n == "node_modules" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") {
			rel, _ := filepath.Rel("..", filepath.Dir(path))
			code = append(code, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(code)
	for i, dir := range code {
		if i > 0 && code[i-1] == dir {
			continue
		}
		if !tree[dir] {
			t.Errorf("%s holds Go code but has no line in README \"Where things are\"", dir)
		}
	}
	for dir := range tree {
		if st, err := os.Stat(filepath.Join("..", dir)); err != nil || !st.IsDir() {
			t.Errorf("README \"Where things are\" names %s/, which is not a folder", dir)
		}
	}
}

// readmeTree reads the first code block after "## Where things are": one
// folder per line, two spaces of indent per level, the folder's name ending
// in "/". It returns every folder's path from the repository root.
func readmeTree(t *testing.T, readme string) map[string]bool {
	t.Helper()
	_, after, ok := strings.Cut(readme, "\n## Where things are\n")
	if !ok {
		t.Fatal(`README has no "## Where things are" section`)
	}
	_, after, ok = strings.Cut(after, "```\n")
	if !ok {
		t.Fatal(`"Where things are" has no code block`)
	}
	block, _, _ := strings.Cut(after, "```")
	tree := map[string]bool{}
	var stack []string
	for _, line := range strings.Split(strings.TrimRight(block, "\n"), "\n") {
		trimmed := strings.TrimLeft(line, " ")
		indent := len(line) - len(trimmed)
		name, _, _ := strings.Cut(trimmed, " ")
		if indent%2 != 0 || !strings.HasSuffix(name, "/") || indent/2 > len(stack) {
			t.Fatalf("README tree line %q: want two spaces per level and a folder name ending in /", line)
		}
		stack = append(stack[:indent/2], strings.TrimSuffix(name, "/"))
		tree[strings.Join(stack, "/")] = true
	}
	if len(tree) < 20 {
		t.Fatalf("read %d folders from the README tree: the reader is broken", len(tree))
	}
	return tree
}
