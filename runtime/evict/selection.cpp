#include "runtime/evict/evict.h"
