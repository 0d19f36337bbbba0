/** The public surface of src/operations/: other folders import only from here. */
export { discardDeadLetter, getDeadLetter, listDeadLetters, replayDeadLetter } from "./deadLetterReplay.ts";
export { ResizeError, ResizeFinisher, layoutStatus, resizePartitions } from "./partitionResize.ts";
export type { DrainProgress, LayoutStatus, ResizeOptions } from "./partitionResize.ts";
