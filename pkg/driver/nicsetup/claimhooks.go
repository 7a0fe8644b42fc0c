package nicsetup

import (
	"context"
	"errors"
	"fmt"

	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/driver"
	"github.com/tsn-dra-driver/tsn-dra-driver/pkg/tsn/config"
)

// ClaimHooks connects claim preparation to the NICs: a prepared claim
// acquires every NIC it has a device on, an unprepared one releases them.
type ClaimHooks struct {
	Setup *Setup
	// NICs looks a NIC up in the current node config.
	NICs func(name string) (config.NIC, bool)
}

var _ driver.ClaimHooks = ClaimHooks{}

// ClaimPrepared implements driver.ClaimHooks. If a later NIC fails, the
// earlier ones are released again: the claim's preparation fails whole.
func (h ClaimHooks) ClaimPrepared(ctx context.Context, claim driver.PreparedClaim) error {
	nics, err := h.nicsOf(claim)
	if err != nil {
		return err
	}
	for i, nic := range nics {
		if err := h.Setup.Acquire(ctx, nic, string(claim.UID)); err != nil {
			for _, done := range nics[:i] {
				if rerr := h.Setup.Release(ctx, done.Name, string(claim.UID)); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
			return err
		}
	}
	return nil
}

// ClaimUnprepared implements driver.ClaimHooks.
func (h ClaimHooks) ClaimUnprepared(ctx context.Context, claim driver.PreparedClaim) error {
	var errs []error
	seen := map[string]bool{}
	for _, d := range claim.Devices {
		if seen[d.NIC] {
			continue
		}
		seen[d.NIC] = true
		errs = append(errs, h.Setup.Release(ctx, d.NIC, string(claim.UID)))
	}
	return errors.Join(errs...)
}

func (h ClaimHooks) nicsOf(claim driver.PreparedClaim) ([]NIC, error) {
	var out []NIC
	seen := map[string]bool{}
	for _, d := range claim.Devices {
		if seen[d.NIC] {
			continue
		}
		seen[d.NIC] = true
		cfg, ok := h.NICs(d.NIC)
		if !ok {
			return nil, fmt.Errorf("device %s: NIC %s is not in the node config", d.Device, d.NIC)
		}
		out = append(out, NIC{
			Name: d.NIC, Interface: d.Interface,
			ApplySchedule:       cfg.ScheduleOwner.Effective() == config.ScheduleOwnerDriver,
			RemoveOnLastRelease: cfg.OnLastRelease.Effective() == config.ReleaseRemove,
		})
	}
	return out, nil
}
