#include "formats/loaded_model.h"
#include "formats/error.h"
namespace mx {
}
