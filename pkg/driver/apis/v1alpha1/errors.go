package v1alpha1

import (
	"fmt"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
)

// MaxReportedErrors is how many problems one error message lists; the others are counted. The
// message of a failed claim goes into its PrepareResult (the kubelet shows it on the pod) and into
// an Event, so it must stay readable whatever a claim carries.
const MaxReportedErrors = 5

// MoreErrors stands for the errors left out of a report: "and N more".
type MoreErrors int

func (n MoreErrors) Error() string { return fmt.Sprintf("and %d more", int(n)) }

// Aggregate joins errors into one that lists the first MaxReportedErrors distinct messages and
// ends with "and N more" when there are others. Nested aggregates (anything with
// Errors() []error, as field.ErrorList.ToAggregate returns) are flattened, and a MoreErrors in them
// adds to the count, so aggregating already-shortened errors again keeps an honest total. Nil for
// no errors. The result is a k8s.io/apimachinery aggregate: its Errors() are the listed errors
// and, last, the MoreErrors.
func Aggregate(errs []error) error {
	var kept []error
	seen := map[string]bool{}
	more := 0
	var walk func(err error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case MoreErrors:
			more += int(e)
		case interface{ Errors() []error }:
			for _, n := range e.Errors() {
				walk(n)
			}
		default:
			msg := e.Error()
			if seen[msg] {
				return
			}
			seen[msg] = true
			if len(kept) < MaxReportedErrors {
				kept = append(kept, e)
			} else {
				more++
			}
		}
	}
	for _, err := range errs {
		walk(err)
	}
	if more > 0 {
		kept = append(kept, MoreErrors(more))
	}
	if len(kept) == 0 {
		return nil
	}
	return utilerrors.NewAggregate(kept)
}
