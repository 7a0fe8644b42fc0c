package nrihooks

import (
	"context"

	"github.com/containerd/nri/pkg/api"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// contextHooks gives each hook the driver's logger: the NRI stub calls hooks
// with contexts of its own. The stub subscribes to the events whose methods
// are defined here.
type contextHooks struct {
	h      *Hooks
	logger logr.Logger
}

func (c *contextHooks) ctx(ctx context.Context) context.Context {
	return klog.NewContext(ctx, c.logger)
}

func (c *contextHooks) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	return c.h.Synchronize(c.ctx(ctx), pods, ctrs)
}

func (c *contextHooks) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return c.h.RunPodSandbox(c.ctx(ctx), pod)
}

func (c *contextHooks) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	return c.h.CreateContainer(c.ctx(ctx), pod, ctr)
}

func (c *contextHooks) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return c.h.StopPodSandbox(c.ctx(ctx), pod)
}

func (c *contextHooks) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return c.h.RemovePodSandbox(c.ctx(ctx), pod)
}
