#include "runtime/text/sampler.h"
