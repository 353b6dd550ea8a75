package retention

// AddPinWith is AddPin with its clock and its sleep between reads of the
// marker given (the interleaving test schedules both).
var AddPinWith = addPin
