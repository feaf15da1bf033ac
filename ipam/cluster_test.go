package ipam_test

import (
	"testing"

	"github.com/nodeplane/nodeplane/ipam"
	"github.com/nodeplane/nodeplane/ipam/internal/clustertest"
)

func TestClusterPool(t *testing.T) {
	clustertest.Run(t, func(t *testing.T, cfg ipam.ClusterConfig) (ipam.ClusterAllocator, error) {
		return ipam.NewClusterPool(cfg)
	})
}
