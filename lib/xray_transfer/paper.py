"""The published numbers (Apostolopoulos & Mpesiana 2020), as printed, for side-by-side tables.

These are the paper's values, typed once from its Tables 2 and 3; nothing of ours is here.
"""

#: Table 2, percent: 2-class accuracy, 3-class accuracy, sensitivity, specificity.
TABLE2 = {
    "vgg19": {"accuracy_2class": 98.75, "accuracy_3class": 93.48, "sensitivity": 92.85, "specificity": 98.75},
    "mobilenet": {"accuracy_2class": 97.40, "accuracy_3class": 92.85, "sensitivity": 99.10, "specificity": 97.09},
    "inception_v3": {"accuracy_2class": 86.13, "accuracy_3class": 92.85, "sensitivity": 12.94, "specificity": 99.70},
    "xception": {"accuracy_2class": 85.57, "accuracy_3class": 92.85, "sensitivity": 0.08, "specificity": 99.99},
    "inception_resnet_v2": {"accuracy_2class": 84.38, "accuracy_3class": 92.85, "sensitivity": 0.01, "specificity": 99.83},
}
#: Backbones whose specificity the authors marked with an asterisk ("not acceptable in real life").
ASTERISK = ("inception_v3", "xception", "inception_resnet_v2")
#: Table 3: COVID-19 vs rest counts, pooled over the ten folds (only two backbones published).
TABLE3 = {
    "vgg19": {"TP": 208, "FP": 15, "TN": 1189, "FN": 16},
    "mobilenet": {"TP": 222, "FP": 35, "TN": 1169, "FN": 2},
}
#: Section 2.1 class sizes, and the total the text states.
COUNTS = {"covid": 224, "normal": 504, "pneumonia": 700}
STATED_TOTAL = 1427
ABSTRACT_ACCURACY = 97.82
