package httpproxy_test

import (
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
)

func TestMain(m *testing.M) { testmain.Run(m) }
