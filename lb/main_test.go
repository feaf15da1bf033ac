package lb

import (
	"os"
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
)

func TestMain(m *testing.M) {
	if agentMain != nil && os.Getenv(clientAgentEnv) == "1" {
		os.Exit(agentMain())
	}
	testmain.Run(m)
}
