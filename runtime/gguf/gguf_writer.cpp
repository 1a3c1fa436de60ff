#include "runtime/gguf/gguf.h"
