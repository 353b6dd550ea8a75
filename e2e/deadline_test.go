package e2e

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"testing"
)

// TestEveryCommandHasADeadline: the e2e tests start no process through
// exec.Command or exec.CommandContext, but through testenv.Command (or a
// testenv helper built on it), which kills a hung one at a deadline and
// names it: a hang then costs one test, not the whole run.
func TestEveryCommandHasADeadline(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("list e2e's files: %v", err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "exec" &&
				(sel.Sel.Name == "Command" || sel.Sel.Name == "CommandContext") {
				t.Errorf("%s: exec.%s starts a process with no deadline: use testenv.Command(t, …)",
					fset.Position(sel.Pos()), sel.Sel.Name)
			}
			return true
		})
	}
}
